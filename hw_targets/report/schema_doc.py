"""``docs/report-schema.md``, generated from ``schema.json`` (``python -m hw_targets.report.schema_doc``).

The page is the schema read aloud: one table per object (key, type, whether it is required or since which
minor version, meaning), the types written compactly (``[T]`` a list, ``{T}`` an object mapping names to
``T``, ``?`` nullable, enumerations and bounds spelled out), the minor versions listed from the schema's
``allOf`` conditionals. ``tests/test_report.py`` checks that the committed page is this module's output, so
a key is added in one place: ``schema.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from .schema import MAX_DEPTH, MAX_OBJECTS, MAX_VALUES, MINOR, SCHEMA, VERSION, minor_conditions, report_schema

DOC = Path("docs") / "report-schema.md"

_INTRO = f"""\
# `report.json`: schema `{SCHEMA}`, version {VERSION}.{MINOR}

<!-- Generated from hw_targets/report/schema.json by `python -m hw_targets.report.schema_doc`: edit the schema,
     then run that command; tests/test_report.py fails while this page differs from the schema. -->

`report.json` is the machine-readable deployment report of one exported model on one target;
`report.html` is rendered from it alone (`xoresnet-report DIR` re-renders the page). Both are
written by `hw_targets.report.write_report` (atomically: temporary file + rename). The report is
described by one JSON Schema (draft 2020-12), `hw_targets/report/schema.json`; this page is
generated from it.

* Versions are `version.minor`. Readers check `"schema": "{SCHEMA}"` and `"version": {VERSION}`
  and accept any `minor` (a report without `minor` is {VERSION}.0). A change that removes or retypes a
  field increments `version` (a reader refuses other versions); a change that adds keys
  increments `minor`: the added keys are required in reports of that minor version or later and
  checked, when present, in older ones. Minor versions so far: {{minors}}.
* `hw_targets.report.validate_report(d)` checks `d` against the schema with the `jsonschema`
  library, and what a schema cannot state: nesting at most {MAX_DEPTH} levels, at most
  {MAX_OBJECTS:,} objects and {MAX_VALUES:,} values in all, strings UTF-8 can encode, raster
  indices within range, the `lava` section's counts and `equal` flags in agreement.
  It raises `hw_targets.report.ReportError` (exit code 3) naming the first problem, e.g.
  `report.drc.layers[3].neurons: expected an integer, got str`; `report_problems(d)` lists them all.
* Types: `str`, `int` (a JSON integer: not `1.0`, not a boolean; within the int64 range), `num`
  (int or float, finite: JSON has no NaN/Infinity), `bool`, `obj` (any JSON object), `[T]` (list of
  T), `{{T}}` (object mapping names to T), `?` nullable; a linked name is an object described below.
  Objects may carry keys the schema does not name; validation ignores them (declare a key in the
  schema when the code writes it).
* Bounds: the schema bounds what the renderer draws (enumerations for what it looks up, at most
  4096 timesteps, names of at most 256 characters, lists and maps of bounded length; `≤ N` below);
  the page itself shows at most 1000 rows per table and 200 layers per plot
  (`hw_targets/report/page.py`), everything else stays in the JSON.
* Units: energies in picojoules (`_pj`) or microjoules (`_uj`); "per sample" = per inference
  (the `T` timesteps of one input); latencies in Loihi timesteps; memory in bits.
* **Estimates**: every hardware limit carries `estimate` and, since 1.2, its `evidence` grade
  (`CODE` read in Lava's source, `RUN` confirmed by running it, `LOG` printed by Intel's
  lava-loihi compiler in the lava-dl tutorials, `INFER` derived from those logs, `MEM` from memory
  of a publication; `estimate` is true for `INFER` and `MEM`); the synaptic-memory model, the
  tiling and packing and all energies are estimates of this tool, labelled as such
  (`docs/resources.md`).
* **Adding a key**: declare it in `hw_targets/report/schema.json`, in the `properties` of its
  object below (its type, bounds and `description`), and run `python -m hw_targets.report.schema_doc`.
  A key only some reports carry stays optional. A key every report carries from now on is also
  required from a new minor version: add it to the `required` list of the `then` of an `allOf`
  conditional `{{"if": {{"required": ["minor"], "properties": {{"minor": {{"minimum": M}}}}}}, "then": ...}}`,
  M = {MINOR + 1} (the current minor plus one), one conditional per new minor, shared by every key that minor adds (the writer
  stamps the newest minor the schema describes).
"""


def _defs() -> dict[str, Any]:
    return report_schema()["$defs"]


def _ref_name(node: dict) -> Optional[str]:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[1] if ref else None


def _nullable_inner(node: dict) -> Optional[dict]:
    """The non-null branch of ``{"anyOf": [X, {"type": "null"}]}``."""
    branches = node.get("anyOf", [])
    rest = [b for b in branches if b != {"type": "null"}]
    return rest[0] if len(branches) == 2 and len(rest) == 1 else None


def _is_section(name: str) -> bool:
    return "properties" in _defs()[name]


def _bounds(node: dict) -> str:
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None and hi is not None:
        return f" in {_n(lo)}..{_n(hi)}"
    if lo is not None:
        return f" ≥ {_n(lo)}"
    if hi is not None:
        return f" ≤ {_n(hi)}"
    return ""


def _n(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) and abs(x) < 1 << 40 else f"{x:g}"


_SCALARS = {"string": "str", "integer": "int", "number": "num", "boolean": "bool", "object": "obj", "null": "null"}


def type_text(node: dict) -> str:
    """The compact type of a schema node (see the page's "Types")."""
    name = _ref_name(node)
    if name:
        return f"[`{name}`](#{name})" if _is_section(name) else type_text(_defs()[name])
    inner = _nullable_inner(node)
    if inner is not None:
        return type_text(inner) + "?"
    if "const" in node:
        return f"`{node['const']!r}`".replace("'", '"')
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kinds = node.get("type", "any")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    nullable = "null" in kinds and len(kinds) > 1
    kind = next((k for k in kinds if k != "null"), "null")
    if kind == "array":
        text = f"[{type_text(node.get('items', {}))}]" + (f" ≤ {_n(node['maxItems'])}" if "maxItems" in node else "")
    elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
        text = "{" + type_text(node["additionalProperties"]) + "}" + (
            f" ≤ {_n(node['maxProperties'])}" if "maxProperties" in node else "")
    elif kind == "string" and "maxLength" in node:
        text = f"str ≤ {node['maxLength']} chars"
    else:
        text = _SCALARS.get(kind, "any") + _bounds(node)
    return text + ("?" if nullable else "")


def _owner(node: dict) -> tuple[Optional[str], dict]:
    """(def name or None, the node to descend into) for a base-schema node."""
    inner = _nullable_inner(node)
    if inner is not None:
        node = inner
    name = _ref_name(node)
    return (name, _defs()[name]) if name else (None, node)


def since_minor() -> dict[tuple[str, str], int]:
    """``{(object, key): minor}``: the keys each minor version made required (object ``""`` is the top level),
    read from the schema's ``allOf`` conditionals alongside the base schema."""
    out: dict[tuple[str, str], int] = {}

    def collect(then: dict, base: dict, owner: str, minor: int) -> None:
        for key in then.get("required", []):
            out.setdefault((owner, key), minor)
        for key, sub in then.get("properties", {}).items():
            name, node = _owner(base["properties"][key])
            collect(sub, node, name or f"{owner}.{key}", minor)
        for word in ("items", "additionalProperties"):
            if word in then:
                name, node = _owner(base[word])
                collect(then[word], node, name or owner, minor)

    for minor, then in sorted(minor_conditions(report_schema()).items()):
        collect(then, report_schema(), "", minor)
    return out


def _sections() -> list[str]:
    """Object definitions in the order a reader meets them (depth first from the top level)."""
    order: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            name = _ref_name(node)
            if name and _is_section(name) and name not in order:
                order.append(name)
                visit(_defs()[name])
            for k, v in node.items():
                if k != "$defs":
                    visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit({k: v for k, v in report_schema().items() if k != "allOf"})
    return order


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", ")")) else text + "."


def _table(node: dict, owner: str, since: dict) -> list[str]:
    rows = ["| key | type | required | meaning |", "|---|---|---|---|"]
    required = set(node.get("required", []))
    for key, prop in node["properties"].items():
        need = "yes" if key in required else (f"since {VERSION}.{since[(owner, key)]}" if (owner, key) in since
                                              else "no")
        meaning = prop.get("description", "").replace("|", "\\|")
        rows.append(f"| `{key}` | {type_text(prop)} | {need} | {meaning} |")
    return rows


def markdown() -> str:
    """The whole page."""
    since = since_minor()
    added: dict[int, list[str]] = {}
    for (owner, key), minor in since.items():
        added.setdefault(minor, []).append(f"`{owner}.{key}`" if owner else f"`{key}`")
    minors = [f"{VERSION}.0 (the first)"] + [f"{VERSION}.{m} (adds {', '.join(keys)})"
                                             for m, keys in sorted(added.items())]
    lines = [_INTRO.replace("{minors}", "; ".join(minors)), "## Top level", ""]
    lines += _table(report_schema(), "", since)
    for name in _sections():
        d = _defs()[name]
        lines += ["", f"## `{name}`", ""]
        if d.get("description"):
            lines += [_sentence(d["description"]), ""]
        lines += _table(d, name, since)
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    """Write the page (default ``docs/report-schema.md``, or the path given)."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else DOC
    path.write_text(markdown(), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
