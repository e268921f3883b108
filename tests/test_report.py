"""The report (hw_targets.report): schema.json and the page generated from it, one-line validation messages,
the Jinja2 page (escaping, bounds, old minor versions, a real browser), the xoresnet-report CLI.

Bad report.json files given to ``xoresnet-report`` are rows of tests/test_battery.py (class ``report``)."""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
from html.parser import HTMLParser

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from conftest import REPO, digits_report
from hw_targets.report import (ReportError, load_report, page, render_html, report_problems, report_schema,
                               validate_report, write_report)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The digits report and the folder it was written to."""
    report = digits_report()
    out = tmp_path_factory.mktemp("report")
    write_report(out, report)
    return report, out


def complete(report: dict) -> dict:
    """``report`` with every section the page can show filled: a Lava run (consistent counts), a failed check
    before calibration, a design-rule violation, a fan-in split, a warning and a parity extra."""
    r = copy.deepcopy(report)
    names = [l["name"] for l in r["statistics"]["layers"]]
    r["lava"] = {"run_config": "Loihi2SimCfg(select_tag='fixed_pt')", "samples": 2, "timesteps": r["latency"]["timesteps"],
                 "steps": 12, "seconds": 1.5, "equal": True, "predictions": [3, 1], "reference_predictions": [3, 1],
                 "process_models": {"LIFReset": {"model": "deploy.lava_models.lif.PyLifResetModelFast",
                                                 "origin": "an origin the page does not know", "processes": 3}},
                 "layers": [{"name": n, "spikes_per_sample": [5, 7], "reference_spikes_per_sample": [5, 7],
                             "equal": True} for n in names]}
    r["architecture_check"] = {"passed": False, "extreme": "widest", "cores": 9, "chips": 1, "lower_bound": 2.5,
                               "bound_ratio": 3.6, "smallest_system": None, "fan_in_splits": 1, "seconds": 0.2,
                               "violations": ["the architecture violation"], "narrowest_cores": 7}
    finding = {"layer": names[0], "limit": "neurons_per_core", "value": 5000, "limit_value": 4096,
               "message": "the design-rule violation", "estimate": True, "source": "the finding source",
               "evidence": "LOG", "warning": False}
    r["drc"]["violations"].append(finding)
    r["drc"]["packing"]["fan_in_splits"].append(
        {"layer": names[1], "neurons": 10, "reason": "the split reason", "need": 1.5, "sum_cores": 1,
         "payload_bits": 24, "extra_latency": 1, "partial_cores": 2, "cores": 3,
         "parts": [{"inputs": [{"synapse": "the split synapse", "start": 0, "stop": 4}], "cores": 1, "axons_in": 4,
                    "synmem_units": 2.0}]})
    r["warnings"].append("the warning")
    r["parity"]["extra key"] = "the parity extra"
    return r


# ---------------------------------------------------------------------- the schema file and its page

def test_schema_is_draft_2020_12_and_packaged():
    Draft202012Validator.check_schema(report_schema())
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "hw_targets.report"]
    folder = REPO / "hw_targets" / "report"
    data = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert {"schema.json", "templates/report.html.j2", "templates/report.css"} <= set(data)
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in data), (data, patterns)


def test_schema_doc_is_generated_from_the_schema():
    from hw_targets.report.schema_doc import markdown

    assert (REPO / "docs" / "report-schema.md").read_text() == markdown(), \
        "docs/report-schema.md differs from hw_targets/report/schema.json: run .venv/bin/python -m " \
        "hw_targets.report.schema_doc"


def test_schema_enumerations_are_the_codes_and_the_renderers():
    """Every enumeration is the code's own list, the renderer knows every value the schema allows, and every
    ``timesteps`` is bounded by the config's limit."""
    from calibration.integer_graph import POPULATION_KINDS, SYNAPSE_KINDS
    from calibration.loihi2_limits import EVIDENCE, sign_mode
    from xoresnet.config import MAX_TIMESTEPS, MERGES

    defs = report_schema()["$defs"]
    kinds = defs["layer"]["properties"]["kind"]["enum"]
    assert kinds == [*POPULATION_KINDS, "readout"] == defs["stat_layer"]["properties"]["kind"]["enum"]
    assert defs["synapse"]["properties"]["kind"]["enum"] == list(SYNAPSE_KINDS)
    assert defs["block"]["properties"]["merge"]["enum"] == list(MERGES)
    assert defs["evidence"]["enum"] == list(EVIDENCE)
    modes = defs["sign_mode"]["enum"]
    assert set(modes) == {sign_mode(np.array(w)) for w in ([1, 0], [-1, 0], [1, -1])}
    assert set(page._SIGNS) == set(modes) and set(page._KIND_COLORS) == set(kinds)

    bounds = []

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict) and "timesteps" in node["properties"]:
                bounds.append(node["properties"]["timesteps"].get("maximum"))
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(report_schema())
    assert len(bounds) == 5 and set(bounds) == {MAX_TIMESTEPS}


# ---------------------------------------------------------------------- validation

def test_real_report_validates(written):
    report, out = written
    assert validate_report(report) is report and report_problems(report) == []
    assert load_report(out) == json.loads((out / "report.json").read_text())
    assert report["drc"]["passed"] and "Oheo Gulch" in report["drc"]["systems_fit"]
    assert report["latency"]["latency_steps"] == report["latency"]["timesteps"] + report["latency"]["readout_latency"]
    blocks = {b["name"]: b for b in report["statistics"]["blocks"]}
    assert set(blocks) == {"layer1.0", "layer1.1", "layer2.0", "layer2.1"}
    b = blocks["layer1.1"]
    assert b["selection"] and b["xor_removed"] is not None
    assert b["or_saturation"] == pytest.approx(b["merge_absorbed"] / b["output_spikes"])
    html = (out / "report.html").read_text()
    assert "PARITY PASSED" in html and html.count("data:image/png;base64,") == 4
    assert not any(s in html for s in ("<script", "<link", "src='http", 'src="http', "url("))  # self-contained
    assert validate_report(complete(report))


def _set(path: str, value):
    """An edit: set the dotted ``path`` (list indices as numbers) to ``value``; ``DELETE`` removes the key."""
    def edit(r):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for p in parents:
            r = r[p]
        if value is DELETE:
            del r[last]
        else:
            r[last] = value
    return edit


DELETE = object()
NESTED = json.loads("[" * 40 + "]" * 40)

#: (edit of a valid report, the first problem it must give)
MESSAGES = [
    (_set("drc.layers.2.neurons", "1024"), r"report\.drc\.layers\[2\]\.neurons: expected an integer, got str"),
    (_set("energy", DELETE), r"report\.energy: required key is missing"),
    (_set("statistics.totals.synops_per_sample", DELETE),
     r"report\.statistics\.totals\.synops_per_sample: required key is missing"),
    (_set("energy.assumptions", DELETE), r"report\.energy\.assumptions: required key is missing"),
    (_set("parity", {"passed": "yes", "samples": 4, "summary": "x"}),
     r"report\.parity\.passed: expected a boolean, got str"),
    (_set("version", 2), r"report\.version: this reader knows version 1, got 2"),
    (_set("minor", -1), r"report\.minor: must be at least 0, got -1"),
    (_set("schema", "other"), r"report\.schema: expected 'xoresnet-report', got 'other'"),
    (_set("drc.layers.0.sign_modes", ["weird"]),
     r"report\.drc\.layers\[0\]\.sign_modes\[0\]: expected one of 'mixed', 'excitatory', 'inhibitory', got 'weird'"),
    (_set("statistics.layers.0.kind", "weird"), r"report\.statistics\.layers\[0\]\.kind: expected one of 'neuron'"),
    (_set("raster.timesteps", 10**7), r"report\.raster\.timesteps: must be at most 4096, got 10000000"),
    (_set("drc.layers.0.name", "x" * 300), r"report\.drc\.layers\[0\]\.name: 'xx.*\.\.\. is 300 characters long"),
    (_set("drc.packing.cores_per_layer." + "y" * 300, 1),
     r"report\.drc\.packing\.cores_per_layer: key 'yy.*\.\.\. is 300 characters long, more than 256"),
    (_set("drc.layers.0.cores", 3.0), r"report\.drc\.layers\[0\]\.cores: expected an integer, got float"),
    (_set("drc.layers.0.cores", 10**30),
     r"report\.drc\.layers\[0\]\.cores: expected an integer, got an integer beyond the int64 range"),
    (_set("statistics.layers.0.firing_rate", math.nan),
     r"report\.statistics\.layers\[0\]\.firing_rate: expected a finite number, got nan"),
    (_set("statistics.layers.0.firing_rate", 1.5), r"report\.statistics\.layers\[0\]\.firing_rate: must be at most 1"),
    (_set("statistics.layers.0.firing_rate", None), r"report\.statistics\.layers\[0\]\.firing_rate: must not be null"),
    (_set("drc.layers.0.tile", DELETE), r"report\.drc\.layers\[0\]\.tile: required key is missing"),  # since 1.2
    (_set("target.limits.du_range.evidence", DELETE), r"report\.target\.limits\.du_range\.evidence: required key"),
    (_set("model.config.deep", NESTED), r"report\.model\.config\.deep\[0\].*\.\.\.: nested 33 levels deep; a report "
                                        r"nests at most 32"),
    (_set("warnings", ["\ud800"]), r"report\.warnings\[0\]: holds an unpaired surrogate"),
]


@pytest.mark.parametrize("edit, message", MESSAGES, ids=[m[1][:60] for m in MESSAGES])
def test_invalid_report_first_problem(edit, message):
    bad = digits_report()
    edit(bad)
    with pytest.raises(ReportError, match=r"^invalid report: " + message):
        validate_report(bad)
    assert re.match(message, report_problems(bad)[0])


def test_size_bounds_before_the_schema():
    """More objects or values than a report holds are refused by the cheap walk before the schema sees them."""
    from hw_targets.report.schema import MAX_OBJECTS, MAX_VALUES

    r = digits_report()
    r["model"]["config"]["objects"] = [{} for _ in range(MAX_OBJECTS)]
    assert report_problems(r) == [f"report: holds more than {MAX_OBJECTS:,} JSON objects, the most a report may hold"]
    r = digits_report()
    r["model"]["config"]["values"] = [0] * MAX_VALUES
    assert report_problems(r) == [f"report: holds more than {MAX_VALUES:,} JSON values, the most a report may hold"]


def test_consistency_beyond_the_schema():
    """The raster's indices and the lava section's counts, which a JSON Schema cannot relate."""
    bad = digits_report()
    pop = next(iter(bad["raster"]["populations"].values()))
    pop["t"][0] = bad["raster"]["timesteps"]
    assert report_problems(bad) == [f"report.raster.populations[{next(iter(bad['raster']['populations']))!r}]: "
                                    "spike index out of range"]
    r = complete(digits_report())
    r["lava"]["layers"][0]["spikes_per_sample"].pop()
    assert report_problems(r) == ["report.lava.layers[0]: expected 2 counts per sample"]
    r = complete(digits_report())
    r["lava"]["layers"][1]["equal"] = False
    assert report_problems(r) == ["report.lava.layers[1].equal: does not match the counts"]


def test_older_minor_versions_validate_and_render():
    """A 1.0 report (no ``minor``, no ``lava``, none of 1.2's keys) is valid and renders; its 1.2 keys are
    required only from minor 2 on, and the ``lava`` section from minor 1."""
    r = digits_report()
    del r["minor"], r["architecture_check"]
    for layer in r["drc"]["layers"]:
        for k in ("tile", "synmem_units_max", "core_memory_max", "lower_bound", "fan_in_split"):
            del layer[k]
    for k in ("lower_bound", "bound_ratio", "smallest_system", "fan_in_splits", "cost_model"):
        del r["drc"]["packing"][k]
    for limit in r["target"]["limits"].values():
        del limit["evidence"]
    for system in r["target"]["systems"]:
        del system["evidence"]
    del r["lava"]
    assert report_problems(r) == []
    html = render_html(r)
    assert "schema xoresnet-report v1.0" in html and "SynMem cost model" not in html
    r["minor"] = 1
    assert report_problems(r) == ["report.lava: required key is missing"]
    r["lava"] = None
    assert report_problems(r) == []
    r["minor"] = 2
    assert "report.architecture_check: required key is missing" in report_problems(r)


def test_parity_section_accepts_report_objects():
    from hw_targets.report import parity_section

    class FakeParity:  # the duck type of deploy.parity.ParityReport
        passed, samples = False, 3

        def summary(self):
            return "parity FAILED: first divergence at sample 0"

        def to_dict(self):
            return {"passed": self.passed, "samples": self.samples, "first_divergence": {"sample": 0}}

    d = parity_section(FakeParity())
    assert d["passed"] is False and d["samples"] == 3 and d["summary"].startswith("parity FAILED")
    assert d["first_divergence"] == {"sample": 0}
    assert parity_section(None) is None
    with pytest.raises(ValueError):
        parity_section({"passed": True})


# ---------------------------------------------------------------------- the page: escaping

#: Markup, quotes, an ampersand, a template expression and matplotlib's mathtext delimiters.
MARK = "<script>alert(\"x&y\")</script><b onmouseover='z'>{{ 7*7 }}$\\frac{a}{$&amp;"


def marked(report: dict) -> tuple[dict, dict[str, str]]:
    """``report`` with every string the schema leaves free (not an enumeration or constant) replaced by
    ``M<i>:`` + :data:`MARK`, map keys included (the same string always gets the same replacement, so names
    still match across sections); returns it and ``{replacement: original}``."""
    defs = report_schema()["$defs"]
    marks: dict[str, str] = {}

    def mark(s: str) -> str:
        return marks.setdefault(s, f"M{len(marks)}:{MARK}")

    def resolve(node: dict) -> dict:
        while True:
            if "$ref" in node:
                node = defs[node["$ref"].rsplit("/", 1)[1]]
            elif "anyOf" in node:
                node = next(b for b in node["anyOf"] if b != {"type": "null"})
            else:
                return node

    def walk(x, node: dict):
        node = resolve(node)
        if x is None or "enum" in node or "const" in node:
            return x
        if isinstance(x, str):
            return mark(x)
        if isinstance(x, list):
            return [walk(v, node.get("items", {})) for v in x]
        if isinstance(x, dict):
            props, values = node.get("properties", {}), node.get("additionalProperties")
            if isinstance(values, dict):  # a map: its keys are names the page may show
                return {mark(k): walk(v, values) for k, v in x.items()}
            return {k: walk(v, props.get(k, {})) for k, v in x.items()}
        return x

    out = walk(report, report_schema())
    return out, {v: k for k, v in marks.items()}


class _Page(HTMLParser):
    """Tags, attributes and text (entities decoded, as a browser shows it) of a page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "div", "b", "small", "span",
             "ul", "li", "img", "p", "table", "thead", "tbody", "tr", "th", "td", "footer"}
PAGE_ATTRIBUTES = {"lang", "charset", "name", "content", "class", "alt", "src"}


def test_markup_in_every_string_is_escaped():
    """Every free string of a complete report, and every map key, carries markup: the report stays valid, the
    page renders (plots included), holds only the template's own tags and attributes, and shows each string
    exactly as written (escaped in the source, never interpreted; the template expression is not evaluated)."""
    report, originals = marked(complete(digits_report()))
    report["parity"][f"K:{MARK}"] = 1  # a parity extra whose key is markup
    assert validate_report(report)
    html = render_html(report)
    doc = _Page(html)
    assert {tag for tag, _ in doc.tags} <= PAGE_TAGS
    assert {a for _, attrs in doc.tags for a in attrs} <= PAGE_ATTRIBUTES
    assert all(attrs["src"].startswith("data:image/png;base64,") for tag, attrs in doc.tags if tag == "img")
    assert "<script" not in html and "onmouseover" not in {a for _, attrs in doc.tags for a in attrs}
    text = "".join(doc.text)
    assert "49" not in re.findall(r"\d+", MARK) and text.count("{{ 7*7 }}") == text.count(MARK)
    shown = {originals[m] for m in re.findall(r"M\d+:" + re.escape(MARK), text)}
    expected = [
        "xoresnet-digits", "digits", "test", "loihi2", "stem.sn", "layer1.1", "layer1.1.merge", "or",
        "the warning", "the design-rule violation", "the architecture violation", "the split reason",
        "the split synapse", "the parity extra", "bit-exact (test fixture)", "Loihi2SimCfg(select_tag='fixed_pt')",
        "deploy.lava_models.lif.PyLifResetModelFast", "an origin the page does not know", "LIFReset",
        "synaptic_ops", digits_report()["generator"]["version"], digits_report()["target"]["dispatch_note"], digits_report()["target"]["notes"][0],
        digits_report()["target"]["limits"]["delay_max"]["source"], digits_report()["energy"]["assumptions"][0],
        digits_report()["energy"]["calibration_points"][0]["source"], digits_report()["drc"]["synmem_model"],
        digits_report()["drc"]["packing"]["method"], digits_report()["created"],
    ]
    assert [s for s in expected if s not in shown] == []
    assert f"K:{MARK}: 1" in text


# ---------------------------------------------------------------------- the page: bounds

def test_page_bounds_what_it_draws():
    """5,000 layers: each table shows MAX_TABLE_ROWS rows and counts the rest, each plot the first
    MAX_PLOT_LAYERS; a raster of 4096 timesteps with 65,536 spikes per population is drawn subsampled."""
    r = complete(digits_report())
    n = 5000
    layer, stat = r["drc"]["layers"][0], r["statistics"]["layers"][0]
    r["drc"]["layers"] = [dict(layer, name=f"l{i}") for i in range(n)]
    r["statistics"]["layers"] = [dict(stat, name=f"l{i}") for i in range(n)]
    r["lava"]["layers"] = [dict(r["lava"]["layers"][0], name=f"l{i}") for i in range(n)]
    r["warnings"] = [f"warning {i}" for i in range(n)]
    T, spikes = 4096, 65536
    rng = np.random.default_rng(0)
    r["raster"].update(timesteps=T, populations={f"l{i}": {
        "neurons": 1024, "t": rng.integers(0, T, spikes).tolist(), "n": rng.integers(0, 1024, spikes).tolist(),
        "total": spikes, "truncated": False} for i in range(16)})
    assert validate_report(r)
    html = render_html(r)
    rows = html.count("<tr>")
    header_rows = html.count("<thead>")
    assert f"{n - page.MAX_TABLE_ROWS:,} more rows not shown; all are in report.json" in html
    assert html.count(f"{n - page.MAX_TABLE_ROWS:,} more rows not shown") == 2  # per-layer and Lava tables
    assert f"&hellip; and {n - page.MAX_TABLE_ROWS:,} more in report.json" in html  # warnings
    assert f"The plots show the first {page.MAX_PLOT_LAYERS} of the 5,000 layers" in html
    assert rows - header_rows < 2 * page.MAX_TABLE_ROWS + 200
    assert html.count("data:image/png;base64,") == 4


# ---------------------------------------------------------------------- the CLI and a real browser

def test_report_cli_rerenders_and_rejects_corrupt(written, tmp_path, capsys):
    from hw_targets.cli import report_main

    report, _ = written
    d = tmp_path / "ok"
    d.mkdir()
    (d / "report.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit) as e:
        report_main([str(d)])
    assert e.value.code == 0 and (d / "report.html").read_text().startswith("<!DOCTYPE html>")
    # invalid content: one line, exit code 3
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = copy.deepcopy(report)
    del broken["energy"]
    (bad / "report.json").write_text(json.dumps(broken))
    with pytest.raises(SystemExit) as e:
        report_main([str(bad)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 3 and err.count("\n") == 0 and "report.energy: required key is missing" in err
    # corrupt JSON through the installed console script
    (bad / "report.json").write_text('{"schema": "xoresnet-report", "version": 1,')
    exe = REPO / ".venv" / "bin" / "xoresnet-report"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from hw_targets.cli import report_main; report_main()"]
    p = subprocess.run(cmd + [str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("xoresnet-report: error:")
    assert "not valid JSON" in p.stderr
    p = subprocess.run(cmd + [str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and "is not a directory" in p.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium; .ci/run installs it)")
def test_report_page_renders_in_headless_chromium(written, tmp_path):
    """The page loads offline in a real browser: the verdict and all four plots are there, and the
    screenshot is a rendered page (thousands of colours), not a blank or error page."""
    from PIL import Image

    _, out = written
    uri = (out / "report.html").resolve().as_uri()
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(common + ["--dump-dom", uri], capture_output=True, text=True, timeout=120).stdout
    assert "PARITY PASSED" in dom and dom.count("<img") == 4 and dom.count("data:image/png;base64,") == 4
    png = tmp_path / "page.png"
    subprocess.run(common + [f"--screenshot={png}", "--window-size=1280,2400", uri], capture_output=True,
                   timeout=120)
    with Image.open(png) as img:
        assert img.size == (1280, 2400)
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 1000
