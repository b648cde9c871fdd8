"""conform_py: the conformance suite's service in Python (docs/languages.md).

One opcode byte, then its arguments; addresses are 4 bytes little-endian.
"""

import skyhost
from skyhost import WitWorld  # noqa: F401  (the component's exports)

exits = []


def address(args: bytes) -> int:
    if len(args) < 4:
        raise ValueError("no address")
    return int.from_bytes(args[:4], "little")


def failure(e: Exception) -> str:
    return f"cause={e.cause}" if isinstance(e, skyhost.CallError) else str(e)


async def handle(m):
    if m.kind == skyhost.EXIT:
        exits.append(m.source)
        return None
    if m.kind != skyhost.REQUEST:
        return None
    if not m.payload:
        raise ValueError("empty request")
    op, args = chr(m.payload[0]), m.payload[1:]
    if op == "e":
        return args
    if op == "s":
        skyhost.send(address(args), args[4:])
        return b""
    if op == "c":
        try:
            return await skyhost.call(address(args), args[4:])
        except (skyhost.CallError, skyhost.SendError) as e:
            raise ValueError(failure(e)) from None
    if op == "r":
        skyhost.register(args.decode())
        return b""
    if op == "q":
        found = skyhost.query(args.decode())
        return b"" if found is None else found.to_bytes(4, "little")
    if op == "t":
        await skyhost.sleep(address(args))
        return b""
    if op == "p":
        try:
            return (await skyhost.spawn(args.decode())).to_bytes(4, "little")
        except skyhost.CallError as e:
            raise ValueError(failure(e)) from None
    if op == "u":
        try:
            skyhost.send(address(args), b"")
            return b""
        except skyhost.SendError as e:
            return e.reason.encode()
    if op == "x":
        raise skyhost.Trap("trap requested")
    if op == "m":
        skyhost.monitor(address(args))
        return b""
    if op == "n":
        return b"".join(a.to_bytes(4, "little") for a in exits)
    raise ValueError(f"unknown op {op}")


skyhost.service(handle)
