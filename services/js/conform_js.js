// conform_js: the conformance suite's service in JavaScript (docs/languages.md).
// One opcode byte, then its arguments; addresses are 4 bytes little-endian.
const exits = [];
const encoder = new TextEncoder();
const utf8 = new TextDecoder();

function address(args) {
  if (args.length < 4) {
    throw new Error('no address');
  }
  return new DataView(args.buffer, args.byteOffset, 4).getUint32(0, true);
}

function le32(n) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n, true);
  return out;
}

function failure(e) {
  return e instanceof CallError ? `cause=${e.cause}` : e.message;
}

async function conform(m) {
  const op = String.fromCharCode(m.payload[0]);
  const args = m.payload.subarray(1);
  switch (op) {
    case 'e':
      return args;
    case 's':
      send(address(args), args.subarray(4));
      return new Uint8Array();
    case 'c':
      try {
        return await call(address(args), args.subarray(4));
      } catch (e) {
        throw new Error(failure(e));
      }
    case 'r':
      register(utf8.decode(args));
      return new Uint8Array();
    case 'q': {
      const found = query(utf8.decode(args));
      return found === undefined ? new Uint8Array() : le32(found);
    }
    case 't':
      await sleep(address(args));
      return new Uint8Array();
    case 'p':
      try {
        return le32(await spawn(utf8.decode(args)));
      } catch (e) {
        throw new Error(failure(e));
      }
    case 'u':
      try {
        send(address(args), new Uint8Array());
        return new Uint8Array();
      } catch (e) {
        return encoder.encode(e.reason);
      }
    case 'm':
      monitor(address(args));
      return new Uint8Array();
    case 'n': {
      const out = new Uint8Array(exits.length * 4);
      exits.forEach((a, i) => out.set(le32(a), i * 4));
      return out;
    }
    default:
      throw new Error(`unknown op ${op}`);
  }
}

service({
  handle(m) {
    if (m.kind === kind.exit) {
      exits.push(m.source);
      return undefined;
    }
    if (m.kind !== kind.request) {
      return undefined;
    }
    if (m.payload.length === 0) {
      return Promise.reject(new Error('empty request'));
    }
    if (m.payload[0] === 0x78) {
      // 'x': a synchronous throw traps the service.
      throw new Error('trap requested');
    }
    return conform(m);
  },
});
