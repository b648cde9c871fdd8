// hello_js: the README's first service in JavaScript (keep the two the same).
// Registers ".hello_js"; a request carries a name (utf-8) and is answered,
// 10 ms later, with "hello, <name>". Other requests are handled meanwhile.
const utf8 = new TextDecoder();
const encoder = new TextEncoder();

service({
  init() {
    register('.hello_js');
  },
  async handle(m) {
    await sleep(10);
    return encoder.encode(`hello, ${utf8.decode(m.payload)}`);
  },
});
