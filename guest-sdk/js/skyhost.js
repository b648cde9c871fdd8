// skyhost.js: write skyhost services in JavaScript.
//
// The build puts this module in front of a service's source (one ES module),
// so the service calls these functions directly and registers itself with
// `service({ init, handle })`. Everything that waits (`call`, `sleep`,
// `spawn`) returns a Promise that settles when the answer to its session
// arrives; other messages are handled meanwhile.
//
// A handler returns the reply (a Uint8Array, or a Promise of one) for a
// request; a rejected Promise answers with an error; a synchronous throw
// traps the service, as a panic would in Rust.
import * as runtime from 'skyhost:service/runtime@0.1.4';

export const kind = { text: 0, response: 1, multicast: 2, exit: 3, error: 7, request: 10, user: 16 };

/** A session that ended in an `error` message: `cause` is its byte 0. */
export class CallError extends Error {
  constructor(cause, detail) {
    super(`cause=${cause}${detail ? `: ${detail}` : ''}`);
    this.cause = cause;
    this.detail = detail;
  }
}

/** A send the host refused: `reason` is the WIT send-error name. */
export class SendError extends Error {
  constructor(reason) {
    super(`send=${reason}`);
    this.reason = reason;
  }
}

const waiting = new Map();
let definition = { handle: () => undefined };
const decoder = new TextDecoder();

function sendError(e) {
  return new SendError(e && e.payload !== undefined ? e.payload : String(e));
}

function wait(session) {
  return new Promise((resolve, reject) => waiting.set(session, { resolve, reject }));
}

/** Registers the service: `init(args)` (optional) and `handle(message)`. */
export function service(def) {
  definition = def;
}

/** Sends `payload` (a Uint8Array) to `dest`; throws a SendError if refused. */
export function send(dest, payload, messageKind = kind.text) {
  try {
    runtime.send(dest, messageKind, 0, payload);
  } catch (e) {
    throw sendError(e);
  }
}

/**
 * Calls `dest`; resolves with the reply bytes, rejects with CallError or SendError.
 * An idle callee on this node may run inside the call (`call-now`) and answer
 * at once: the Promise is then settled already.
 */
export function call(dest, payload) {
  let started;
  try {
    started = runtime.callNow(dest, payload, 0);
  } catch (e) {
    return Promise.reject(sendError(e));
  }
  if (started.answer != null) {
    const m = started.answer;
    return m.kind === kind.response ? Promise.resolve(m.payload) : Promise.reject(callError(m.payload));
  }
  return wait(started.session);
}

function callError(payload) {
  return new CallError(payload[0], decoder.decode(payload.subarray(1)));
}

/** Resolves after `ms` milliseconds (a host timer). */
export function sleep(ms) {
  return wait(runtime.timeout(ms));
}

/** Spawns `module`; resolves with its address once its init succeeded. */
export async function spawn(module, args = new Uint8Array()) {
  const bytes = await wait(runtime.spawn(module, args));
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
}

/** Gives this service a name; throws with the name-error if refused. */
export function register(name) {
  runtime.register(name);
}

/** The address holding `name`, or undefined. */
export function query(name) {
  return runtime.query(name);
}

/** Be told with an `exit` message when `target` ends. */
export function monitor(target) {
  runtime.monitor(target);
}

/** This service's address. */
export function self() {
  return runtime.selfAddress();
}

/** Writes an info log line. */
export function log(text) {
  runtime.log('info', String(text));
}

export function init(args) {
  if (definition.init) {
    definition.init(args);
  }
}

// The batch buffer (wit/service.wit, `dispatch-batch`): a count, 32-byte
// headers from offset 8, then the payloads; each payload is a view into it.
export function dispatchBatch(batch) {
  const view = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
  const count = batch.byteLength >= 8 ? view.getUint32(0, true) : 0;
  for (let i = 0; i < count; i++) {
    const at = 8 + i * 32;
    if (at + 32 > batch.byteLength) {
      break;
    }
    const offset = view.getUint32(at + 12, true);
    const len = view.getUint32(at + 16, true);
    if (offset + len > batch.byteLength) {
      break;
    }
    deliver({
      kind: view.getUint8(at),
      source: view.getUint32(at + 4, true),
      session: view.getUint32(at + 8, true),
      payload: batch.subarray(offset, offset + len),
    });
  }
}

function deliver(m) {
  if (m.kind === kind.response || m.kind === kind.error) {
    const w = waiting.get(m.session);
    if (w) {
      waiting.delete(m.session);
      if (m.kind === kind.response) {
        w.resolve(m.payload);
      } else {
        w.reject(callError(m.payload));
      }
      return;
    }
  }
  handle(m);
}

function handle(m) {
  const wantsReply = m.kind === kind.request && m.session !== 0;
  const reply = definition.handle(m);
  if (!wantsReply) {
    return;
  }
  Promise.resolve(reply).then(
    (bytes) => respond(m, { tag: 'ok', val: bytes ?? new Uint8Array() }),
    (e) => respond(m, { tag: 'err', val: String(e && e.message !== undefined ? e.message : e) }),
  );
}

function respond(m, result) {
  try {
    runtime.respond(m.source, m.session, result);
  } catch (_) {
    // The caller is gone; nobody is left to tell.
  }
}
