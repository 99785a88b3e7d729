"""What PostgreSQL can store as it is: the limits both doors check, free of Django.

PostgreSQL refuses NUL in text and jsonb (psycopg raises before the query is
sent), and unpaired UTF-16 surrogates cannot be encoded as UTF-8 at all; a
value nested too deep makes Python's own JSON code recurse past its limit.
"""

from __future__ import annotations

import re

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def depth_exceeds(value: object, limit: int) -> bool:
    """Return whether arrays and objects in `value` nest deeper than `limit`.

    Iterative, so that measuring a deep value cannot itself recurse too deep.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
