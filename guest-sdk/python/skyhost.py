"""skyhost: write skyhost services in Python.

A service is a module that calls ``skyhost.service(handle, init=None)``:
``handle(message)`` is an ``async def`` that returns the reply (``bytes``)
to a request; ``await skyhost.call(...)``, ``await skyhost.sleep(...)`` and
``await skyhost.spawn(...)`` wait for the answer to a session while other
messages are handled. An ``Exception`` raised by a handler answers the
request with an error; ``skyhost.Trap`` (or any ``BaseException`` that is not
an ``Exception``) traps the service, as a panic would in Rust.

The build (componentize-py) makes the module a component of the
``batch-service`` world; this file provides the ``WitWorld`` class it exports.
"""

import json
import struct
from typing import Any, Awaitable, Callable, Optional

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import runtime, types

TEXT, RESPONSE, MULTICAST, EXIT, ERROR, REQUEST, USER = 0, 1, 2, 3, 7, 10, 16

Message = types.Message


class CallError(Exception):
    """A session that ended in an ``error`` message; ``cause`` is its byte 0."""

    def __init__(self, cause: int, detail: str):
        super().__init__(f"cause={cause}" + (f": {detail}" if detail else ""))
        self.cause = cause
        self.detail = detail


class SendError(Exception):
    """A send the host refused; ``reason`` is the WIT send-error name."""

    def __init__(self, reason: str):
        super().__init__(f"send={reason}")
        self.reason = reason


class Trap(BaseException):
    """Raised by a handler to trap the service."""


class _Session:
    """What a coroutine awaits: the answer to one host session."""

    def __init__(self, session: int):
        self.session = session

    def __await__(self):
        answer = yield self
        return answer


class _Answered:
    """What a coroutine awaits for a call answered inside ``call-now``:
    the answer, at once."""

    def __init__(self, answer: Message):
        self.answer = answer

    def __await__(self):
        if self.answer.kind == ERROR:
            raise _call_error(self.answer.payload)
        return self.answer.payload
        yield  # An awaitable's __await__ is a generator; this one never waits.


def _call_error(payload: bytes) -> "CallError":
    detail = payload[1:].decode("utf-8", "replace")
    return CallError(payload[0] if payload else 255, detail)


_waiting = {}
_handle: Callable[[Message], Awaitable[Optional[bytes]]] = None
_init: Optional[Callable[[bytes], None]] = None


def service(handle, init=None):
    """Registers the service's ``async def handle(message)`` and ``init(args)``."""
    global _handle, _init
    _handle, _init = handle, init


def _send_error(e: Err) -> SendError:
    return SendError(e.value.name.lower().replace("_", "-"))


def send(dest: int, payload: bytes, kind: int = TEXT) -> None:
    """Sends ``payload`` to ``dest``; raises ``SendError`` if refused."""
    try:
        runtime.send(dest, kind, 0, payload)
    except Err as e:
        raise _send_error(e) from None


def call(dest: int, payload: bytes) -> Awaitable[bytes]:
    """Calls ``dest``; the answer's bytes, or ``CallError``/``SendError``.
    An idle callee on this node may run inside the call (``call-now``) and
    answer at once; awaiting the call then does not wait."""
    try:
        started = runtime.call_now(dest, payload, 0)
    except Err as e:
        raise _send_error(e) from None
    if started.answer is not None:
        return _Answered(started.answer)
    return _Session(started.session)


def sleep(ms: int) -> Awaitable[bytes]:
    """Resumes after ``ms`` milliseconds (a host timer)."""
    return _Session(runtime.timeout(ms))


async def spawn(module: str, args: bytes = b"") -> int:
    """Starts a service of ``module``; its address once its init succeeded."""
    answer = await _Session(runtime.spawn(module, args))
    return int.from_bytes(answer[:4], "little")


async def call_json(dest: int, value: Any) -> Any:
    """Calls ``dest`` with ``value`` as JSON and decodes its JSON answer: the
    encoding every skyhost SDK speaks (Rust: ``skyhost_sdk::json``)."""
    return json.loads(await call(dest, json.dumps(value).encode()))


def from_json(message: Message) -> Any:
    """The JSON value in a message's payload."""
    return json.loads(message.payload)


def to_json(value: Any) -> bytes:
    """``value`` as a JSON payload (an answer, or a send)."""
    return json.dumps(value).encode()


def register(name: str) -> None:
    """Gives this service a name; raises ``Err`` with the name error."""
    runtime.register(name)


def query(name: str) -> Optional[int]:
    """The address holding ``name``, or None."""
    return runtime.query(name)


def monitor(target: int) -> None:
    """Be told with an ``EXIT`` message when ``target`` ends."""
    runtime.monitor(target)


def self_address() -> int:
    """This service's address."""
    return runtime.self_address()


def log(text: str) -> None:
    """Writes an info log line."""
    runtime.log(types.LogLevel.INFO, str(text))


def _step(coroutine, value=None, error=None) -> None:
    """Runs ``coroutine`` until it waits on a session (or ends)."""
    try:
        waited = coroutine.throw(error) if error else coroutine.send(value)
    except StopIteration:
        return
    _waiting[waited.session] = coroutine


async def _serve(message: Message) -> None:
    wants_reply = message.kind == REQUEST and message.session != 0
    try:
        reply = await _handle(message)
    except Exception as e:
        if wants_reply:
            _respond(message, Err(str(e)))
        return
    if wants_reply:
        _respond(message, Ok(bytes(reply or b"")))


def _respond(message: Message, result) -> None:
    try:
        runtime.respond(message.source, message.session, result)
    except Err:
        pass  # The caller is gone; nobody is left to tell.


# The fields of a batch header a handler needs: kind, source, session,
# payload offset and length (flags, reserved words and the trace skipped).
_HEADER = struct.Struct("<B3xIIII")
_COUNT = struct.Struct("<I")


class WitWorld(wit_world.WitWorld):
    """The component's exports: ``init`` and ``dispatch-batch``."""

    def init(self, args: bytes) -> None:
        if _init is not None:
            try:
                _init(args)
            except Exception as e:
                raise Err(str(e)) from None

    def dispatch_batch(self, batch: bytes) -> None:
        """The batch buffer (wit/service.wit): a count, 32-byte headers from
        offset 8, then the payloads."""
        size = len(batch)
        count = min(_COUNT.unpack_from(batch)[0], (size - 8) // 32) if size >= 8 else 0
        unpack = _HEADER.unpack_from
        for at in range(8, 8 + 32 * count, 32):
            kind, source, session, offset, length = unpack(batch, at)
            if offset + length > size:
                break
            payload = batch[offset : offset + length]
            if kind == RESPONSE or kind == ERROR:
                waiter = _waiting.pop(session, None)
                if waiter is not None:
                    if kind == RESPONSE:
                        _step(waiter, payload)
                    else:
                        _step(waiter, error=_call_error(payload))
                    continue
            _step(_serve(Message(kind, source, session, payload)))
