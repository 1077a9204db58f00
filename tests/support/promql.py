"""Metric names, as PromQL expressions use them and as a /metrics page exports them.

- `metric_names(expr)`: the metric names an expression selects. A small tokenizer, not a PromQL
  parser: identifiers that are not functions (followed by `(`), not keywords or aggregation
  operators, not inside label matchers `{...}`, range or subquery brackets `[...]`, strings or
  `by (...)`/`on (...)` lists, and not numbers or durations. Grafana's variables (`$__range`,
  `${DS_PROMETHEUS}`) are skipped.
- `exported_names(text)`: the series names a Prometheus text exposition holds, families without
  samples included (a labelled counter nobody has counted yet still has a name to query):
  counters as `<name>_total`, histograms as `_bucket`/`_count`/`_sum`.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# Keywords that may stand where a metric name could: binary operators, modifiers, literals.
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan", "atan2"}
)
# These take a parenthesised list of label names.
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
# Aggregation operators may be followed by `by (...)` rather than `(`.
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
_CLOSING = {"{": "}", "[": "]", "(": ")"}


def _is_name_start(char: str) -> bool:
    return char.isascii() and (char.isalpha() or char in "_:")


def _is_name_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char in "_:")


def _skip_string(text: str, start: int) -> int:
    """The index after the string literal opened at `start` (', " or `; backslash escapes)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise ValueError(f"unterminated string at {start} in {text!r}")


def _skip_group(text: str, start: int) -> int:
    """The index after the bracket opened at `start` closes (strings inside skipped, nesting
    counted)."""
    opening = text[start]
    closing = _CLOSING[opening]
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char in "'\"`":
            i = _skip_string(text, i)
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {opening!r} at {start} in {text!r}")


def _skip_variable(text: str, start: int) -> int:
    """The index after a Grafana variable: `${...}` or `$name`."""
    if text.startswith("${", start):
        end = text.find("}", start)
        if end < 0:
            raise ValueError(f"unterminated variable at {start} in {text!r}")
        return end + 1
    i = start + 1
    while i < len(text) and _is_name_char(text[i]):
        i += 1
    return i


def _next_char(text: str, i: int) -> tuple[str, int]:
    """The next non-blank character at or after `i`, and its index ('' at the end)."""
    while i < len(text) and text[i].isspace():
        i += 1
    return (text[i], i) if i < len(text) else ("", i)


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects."""
    names: set[str] = set()
    depth, i = 0, 0  # open parentheses
    while i < len(expr):
        char = expr[i]
        if char in "()":
            depth += 1 if char == "(" else -1
            if depth < 0:
                raise ValueError(f"unbalanced ')' at {i} in {expr!r}")
            i += 1
        elif char in "'\"`":
            i = _skip_string(expr, i)
        elif char in "{[":
            i = _skip_group(expr, i)
        elif char == "#":  # a comment, to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif char == "$":
            i = _skip_variable(expr, i)
        elif char.isdigit() or (char == "." and expr[i + 1 : i + 2].isdigit()):
            i += 1  # a number or duration: 5m, 1e-9, 0x1f, 1h30m
            while i < len(expr) and (_is_name_char(expr[i]) or expr[i] == "."):
                if expr[i] in "eE" and expr[i + 1 : i + 2] in ("-", "+"):
                    i += 1
                i += 1
        elif _is_name_start(char):
            start = i
            while i < len(expr) and _is_name_char(expr[i]):
                i += 1
            word = expr[start:i]
            following, at = _next_char(expr, i)
            if word.lower() in LABEL_LISTS and following == "(":
                i = _skip_group(expr, at)
            elif following == "(" or word.lower() in KEYWORDS | AGGREGATIONS | LABEL_LISTS:
                pass  # a function, or an aggregation before its `by (...)`, or a keyword
            else:
                names.add(word)
        else:
            i += 1
    if depth:
        raise ValueError(f"{depth} '(' not closed in {expr!r}")
    return names


def _family_series(name: str, kind: str) -> set[str]:
    """The series names a family without samples would have."""
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    if kind == "summary":
        return {name, f"{name}_count", f"{name}_sum"}
    if kind == "info":
        return {f"{name}_info"}
    return {name}  # gauge, untyped (unknown), stateset


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page (Prometheus text format) exports."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(_family_series(family.name, family.type))
        names.update(sample.name for sample in family.samples)
    return names
