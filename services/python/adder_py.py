"""adder_py: adds two numbers sent as JSON, or has another service (in any
language) add them: the cross-language JSON test's Python side.

Request ``{"a": 2, "b": 3}`` answers ``{"sum": 5, "by": "python"}``; with
``"via": <address>`` it calls that service with ``{"a", "b"}`` as JSON and
answers its answer plus ``"through": "python"``.
"""

import skyhost
from skyhost import WitWorld  # noqa: F401  (the component's exports)


async def handle(m):
    if m.kind != skyhost.REQUEST:
        return None
    req = skyhost.from_json(m)
    if "via" not in req:
        return skyhost.to_json({"sum": req["a"] + req["b"], "by": "python"})
    answer = await skyhost.call_json(req["via"], {"a": req["a"], "b": req["b"]})
    answer["through"] = "python"
    return skyhost.to_json(answer)


skyhost.service(handle)
