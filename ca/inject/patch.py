"""An RFC 6902 JSON Patch from one JSON value to another (pure), as an admission webhook answers.

Objects are compared key by key (keys removed, added, or changed below); lists item by item
over their common length, then `add .../-` for items appended, or `remove` of the surplus from
the end; values of other types are replaced. Applying the patch to `before` gives `after`
exactly; the patch is not always the shortest one: an item inserted at the front of a list (as
the init agent is, before a pod's own init containers) shows as every later item changed.
"""

from __future__ import annotations

from typing import Any

Operation = dict[str, Any]


def pointer_token(key: str | int) -> str:
    """A JSON Pointer reference token (RFC 6901): `~` -> `~0`, `/` -> `~1`."""
    return str(key).replace("~", "~0").replace("/", "~1")


def json_patch(before: Any, after: Any) -> list[Operation]:
    operations: list[Operation] = []
    _diff(before, after, "", operations)
    return operations


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: True == 1 in Python, not in JSON, so types are compared at every level."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _diff(before: Any, after: Any, path: str, operations: list[Operation]) -> None:
    if _same(before, after):
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in before:
            if key not in after:
                operations.append({"op": "remove", "path": f"{path}/{pointer_token(key)}"})
        for key, value in after.items():
            child = f"{path}/{pointer_token(key)}"
            if key not in before:
                operations.append({"op": "add", "path": child, "value": value})
            else:
                _diff(before[key], value, child, operations)
        return
    if isinstance(before, list) and isinstance(after, list):
        common = min(len(before), len(after))
        for index in range(common):
            _diff(before[index], after[index], f"{path}/{index}", operations)
        operations.extend({"op": "add", "path": f"{path}/-", "value": v} for v in after[common:])
        # Removed from the end first, so that each index still names the item meant.
        operations.extend(
            {"op": "remove", "path": f"{path}/{index}"} for index in reversed(range(common, len(before)))
        )
        return
    # At the root, path "" replaces the whole document (RFC 6902, 4.3).
    operations.append({"op": "replace", "path": path, "value": after})
