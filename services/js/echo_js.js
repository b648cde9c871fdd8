// echo_js: answers every request with its payload unchanged (JavaScript).
service({
  handle(m) {
    return m.payload;
  },
});
