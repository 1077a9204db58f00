"""An RFC 6902 JSON Patch from one JSON value to another (pure), as an admission webhook answers.

Objects are compared key by key (keys removed, added, or changed below); a list whose length
is unchanged is compared item by item; a list that grew by items at its end gets `add ... /-`
operations; any other changed list is replaced whole. Applying the patch to `before` gives
`after` exactly; the patch is not always the shortest one.
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
    # True == 1 in Python, not in JSON: compare types too.
    return type(a) is type(b) and a == b


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
        if len(before) == len(after):
            for index, (old, new) in enumerate(zip(before, after, strict=True)):
                _diff(old, new, f"{path}/{index}", operations)
            return
        if len(after) > len(before) and all(
            _same(old, new) for old, new in zip(before, after[: len(before)], strict=True)
        ):
            operations.extend({"op": "add", "path": f"{path}/-", "value": v} for v in after[len(before) :])
            return
    # At the root, path "" replaces the whole document (RFC 6902, 4.3).
    operations.append({"op": "replace", "path": path, "value": after})
