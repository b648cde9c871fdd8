"""hello_py: the README's first service in Python (keep the two the same).

Registers ".hello_py"; a request carries a name (utf-8) and is answered,
10 ms later, with "hello, <name>". Other requests are handled meanwhile.
"""

import skyhost
from skyhost import WitWorld  # noqa: F401  (the component's exports)


def init(args: bytes) -> None:
    skyhost.register(".hello_py")


async def handle(m):
    await skyhost.sleep(10)
    return b"hello, " + m.payload


skyhost.service(handle, init)
