"""Schemathesis hooks for the nixfleet control plane run (tests/schemathesis/run.sh).

GET /api/v1/events long-polls up to `wait` seconds (at most 60) when nothing matches; generated
values would make the run wait minutes for nothing. The hook caps `wait` at 1 second: every other
value, valid or not, reaches the server as generated.
"""

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query or {}
    value = query.get("wait")
    if value is None:
        return
    try:
        n = int(str(value))
    except ValueError:
        return
    if n > 1:
        query["wait"] = 1
