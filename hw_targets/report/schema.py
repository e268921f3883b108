"""Validation of ``report.json`` against ``schema.json``, the one JSON Schema (draft 2020-12) of the report.

The schema file is the single description of the report: its keys, types, enumerations and bounds, the
keys each minor version added (the ``allOf`` conditionals on ``minor``), and the meaning of every key
(``docs/report-schema.md`` is generated from it, :mod:`hw_targets.report.schema_doc`). The ``jsonschema``
library validates against it with two stricter types than JSON Schema's own, matching what the writer
emits and the renderer needs: ``integer`` is a JSON integer (not ``1.0``, not a boolean) in the int64
range, ``number`` a finite number (not a boolean). What the schema cannot state is checked here:

* :func:`structure_problems`: nesting at most :data:`MAX_DEPTH` levels, at most :data:`MAX_OBJECTS` objects and
  :data:`MAX_VALUES` values in all, and strings UTF-8 can encode (checked iteratively, before the schema, so deep
  JSON never reaches a recursive check and the schema's time is bounded: about 70 µs per object);
* :func:`consistency_problems`: the ``lava`` counts (one per sample, ``equal`` as stated) and the raster's
  spike indices (within its timesteps and neurons).

:func:`report_problems` lists every problem as one line (``report.drc.layers[3].neurons: expected an
integer, got str``); :func:`validate_report` raises :class:`ReportError` (exit code 3) naming the first.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from importlib import resources
from typing import Any, Iterator

from jsonschema import Draft202012Validator, ValidationError, validators

from xoresnet.errors import XoresnetError

SCHEMA_FILE = "schema.json"
#: A report nests 8 levels deep; anything deeper than this is not a report (and deep JSON is refused before
#: any recursive code sees it).
MAX_DEPTH = 32
#: JSON objects and JSON values (objects, lists and scalars) a report holds at most. XOResNet-101 at 32 px writes
#: about 10^4 objects (a core table of 4,096 rows, a few hundred layers per section) and 1.5 million values (its
#: raster: ~300 populations x 2,000 spikes x 2); the bounds keep validation of any report under ~30 s on one core.
MAX_OBJECTS = 1 << 18
MAX_VALUES = 1 << 24
#: ``integer`` and ``number`` values are within the int64 range (a float of a larger integer overflows a plot).
INT64 = 1 << 63


class ReportError(XoresnetError):
    """A missing, unreadable or invalid report.json (bad input file: exit code 3)."""

    exit_code = 3


@functools.cache
def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` (``hw_targets/report/schema.json``)."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def minor_conditions(schema: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """``{minor: the subschema required from that minor on}``, from the schema's ``allOf`` conditionals
    ``{"if": {"required": ["minor"], "properties": {"minor": {"minimum": m}}}, "then": ...}``."""
    out = {}
    for cond in schema.get("allOf", []):
        out[cond["if"]["properties"]["minor"]["minimum"]] = cond["then"]
    return out


SCHEMA: str = report_schema()["properties"]["schema"]["const"]
#: ``version`` changes when a field is removed or retyped (a reader refuses other versions); ``minor``
#: when keys are added (a reader accepts any minor; a key is required from the minor that added it on).
VERSION: int = report_schema()["properties"]["version"]["const"]
#: The newest minor version the schema describes: the one the writer stamps.
MINOR: int = max(minor_conditions(report_schema()), default=0)


def _is_integer(checker, x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -INT64 <= x < INT64


def _is_number(checker, x: Any) -> bool:
    return _is_integer(checker, x) or (isinstance(x, float) and math.isfinite(x))


_ITEMS = Draft202012Validator.VALIDATORS["items"]


def _items(validator, items: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    """``items``, with a fast path for the report's long lists (raster indices, per-sample counts, names): items
    of one scalar type, or of any value, are type-checked in a loop instead of descended into one by one (the
    errors are the same: a failing item is descended into as usual)."""
    if isinstance(instance, list) and "prefixItems" not in schema and isinstance(items, dict) \
            and set(items) <= {"type", "description"} and isinstance(items.get("type", "any"), str):
        kind = items.get("type")
        for i, x in enumerate(instance):
            if kind is not None and not validator.is_type(x, kind):
                yield from validator.descend(x, items, path=i, schema_path=i)
        return
    yield from _ITEMS(validator, items, instance, schema)


_Validator = validators.extend(
    Draft202012Validator, validators={"items": _items},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number}))


@functools.cache
def _validator() -> Draft202012Validator:
    return _Validator(report_schema())


# ---------------------------------------------------------------------- one-line messages

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a finite number", "boolean": "a boolean",
               "object": "an object", "array": "a list", "null": "null"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _path(parts, longest: int = 12) -> str:
    """``report.a.b[2]['c.d']``, the first ``longest`` steps of a longer path followed by ``...``."""
    out = "report"
    for p in parts[:longest]:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if _IDENTIFIER.match(p) else f"[{_short(p)}]"
    return out + ("..." if len(parts) > longest else "")


def _short(x: Any, n: int = 60) -> str:
    text = repr(x) if not isinstance(x, (dict, list)) else type(x).__name__
    return text if len(text) <= n else text[: n - 3] + "..."


def _got(x: Any) -> str:
    if isinstance(x, int) and not isinstance(x, bool) and not -INT64 <= x < INT64:
        return "an integer beyond the int64 range"
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    return type(x).__name__


def _message(e: ValidationError) -> str:
    """One line for a (leaf) validation error."""
    v, x, path = e.validator, e.instance, list(e.absolute_path)
    where = _path(path)
    if v == "required":
        missing = next((k for k in e.validator_value if k not in x), "?")
        return f"{_path([*path, missing])}: required key is missing"
    if v == "type":
        kinds = [e.validator_value] if isinstance(e.validator_value, str) else e.validator_value
        if x is None:
            return f"{where}: must not be null"
        return f"{where}: expected {' or '.join(_TYPE_NAMES.get(k, k) for k in kinds)}, got {_got(x)}"
    if v == "const":
        if path == ["version"]:
            return f"{where}: this reader knows version {VERSION}, got {_short(x)}"
        return f"{where}: expected {e.validator_value!r}, got {_short(x)}"
    if v == "enum":
        return f"{where}: expected one of {', '.join(map(repr, e.validator_value))}, got {_short(x)}"
    if v in ("minimum", "maximum"):
        return f"{where}: must be at {'least' if v == 'minimum' else 'most'} {e.validator_value}, got {_short(x)}"
    if v in ("maxItems", "maxProperties"):
        what = "items" if v == "maxItems" else "keys"
        return f"{where}: {len(x):,} {what}, more than the {e.validator_value:,} a report may hold here"
    if v == "maxLength":
        return f"{where}: {_short(x)} is {len(x):,} characters long, more than {e.validator_value}"
    if v == "minLength":
        return f"{where}: must not be empty"
    return f"{where}: {e.message[:200]}"


def _leaves(e: ValidationError) -> Iterator[ValidationError]:
    """The errors to report for ``e``: an ``anyOf`` of an object and ``null`` (a nullable section) reports the
    object's own errors, not that the value is not null."""
    if not e.context:
        yield e
        return
    branches: dict[Any, list[ValidationError]] = {}
    for sub in e.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [b for b in branches.values()
               if not (len(b) == 1 and b[0].validator == "type" and not b[0].relative_path)]
    if len(fitting) == 1:
        for sub in fitting[0]:
            yield from _leaves(sub)
    else:
        yield e


def _property_name_message(e: ValidationError) -> str:
    """``propertyNames`` errors name the key (their instance) under the object's path."""
    where = _path(list(e.absolute_path))
    return _message(e).replace(where + ":", f"{where}: key", 1)


def schema_problems(report: Any, limit: int = 20) -> list[str]:
    """The schema's verdict on ``report``, at most ``limit`` one-line problems."""
    out: list[str] = []
    for e in itertools.islice(_validator().iter_errors(report), limit):
        for leaf in _leaves(e):
            in_key = "propertyNames" in leaf.absolute_schema_path
            out.append(_property_name_message(leaf) if in_key else _message(leaf))
    return list(dict.fromkeys(out))[:limit]


# ---------------------------------------------------------------------- what the schema cannot say

def _encodable(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def structure_problems(report: Any) -> list[str]:
    """Nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_OBJECTS` objects or :data:`MAX_VALUES` values, or
    a string (key or value) with an unpaired surrogate, which no UTF-8 page can hold; checked without recursion. At
    most one problem."""
    if isinstance(report, str) and not _encodable(report):
        return ["report: holds an unpaired surrogate, which UTF-8 cannot encode"]
    stack: list[tuple[Any, int, tuple]] = [(report, 1, ())] if isinstance(report, (dict, list)) else []
    objects = values = 0
    while stack:
        x, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            return [f"{_path(path)}: nested {depth} levels deep; a report nests at most {MAX_DEPTH}"]
        objects += isinstance(x, dict)
        values += len(x)
        if objects > MAX_OBJECTS:
            return [f"report: holds more than {MAX_OBJECTS:,} JSON objects, the most a report may hold"]
        if values > MAX_VALUES:
            return [f"report: holds more than {MAX_VALUES:,} JSON values, the most a report may hold"]
        items = x.items() if isinstance(x, dict) else enumerate(x)
        for k, v in items:
            if isinstance(k, str) and not _encodable(k):
                return [f"{_path(path)}: a key holds an unpaired surrogate, which UTF-8 cannot encode"]
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1, (*path, k)))
            elif isinstance(v, str) and not _encodable(v):
                return [f"{_path((*path, k))}: holds an unpaired surrogate, which UTF-8 cannot encode"]
    return []


def consistency_problems(report: dict) -> list[str]:
    """Of a report the schema accepts: the ``lava`` section's counts (one per sample, ``equal`` as stated) and
    the raster's spike indices (within its timesteps and each population's neurons)."""
    out = []
    lava = report.get("lava")
    if lava:
        for i, layer in enumerate(lava["layers"]):
            where = f"report.lava.layers[{i}]"
            if len(layer["spikes_per_sample"]) != lava["samples"] or \
                    len(layer["reference_spikes_per_sample"]) != lava["samples"]:
                out.append(f"{where}: expected {lava['samples']} counts per sample")
            elif layer["equal"] != (layer["spikes_per_sample"] == layer["reference_spikes_per_sample"]):
                out.append(f"{where}.equal: does not match the counts")
        if not out and lava["equal"] != all(layer["equal"] for layer in lava["layers"]):
            out.append("report.lava.equal: does not match the layers")
    raster = report.get("raster")
    if raster:
        for name, r in raster["populations"].items():
            where = f"report.raster.populations[{name!r}]"
            if len(r["t"]) != len(r["n"]):
                out.append(f"{where}: t and n differ in length")
            elif r["t"] and (min(r["t"]) < 0 or max(r["t"]) >= raster["timesteps"] or min(r["n"]) < 0
                             or max(r["n"]) >= r["neurons"]):
                out.append(f"{where}: spike index out of range")
    return out


def report_problems(report: Any, limit: int = 20) -> list[str]:
    """Every problem (up to ``limit``) of ``report`` against the schema, version :data:`VERSION` of any minor (a
    report without ``minor`` is x.0); empty when valid."""
    return (structure_problems(report) or schema_problems(report, limit) or consistency_problems(report))[:limit]


def validate_report(report: Any) -> dict:
    """Return ``report`` if it is a valid report, else raise :class:`ReportError` (one line)."""
    problems = report_problems(report)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ReportError(f"invalid report: {problems[0]}{more}")
    return report
