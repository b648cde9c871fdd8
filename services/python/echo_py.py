"""echo_py: answers every request with its payload unchanged (Python)."""

import skyhost
from skyhost import WitWorld  # noqa: F401  (the component's exports)


async def handle(m):
    return m.payload


skyhost.service(handle)
