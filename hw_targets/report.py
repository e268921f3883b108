"""``report.json`` (schema ``xoresnet-report`` version 1.2, ``docs/report-schema.md``) and ``report.html``.

* :func:`make_report`: everything from an integer graph and a dataset split (one reference run).
* :func:`build_report`: assemble the JSON from already computed parts; :func:`lava_section` the
  ``lava`` part from a Lava run and the reference's stream on the parity samples.
* :func:`validate_report` / :func:`report_problems`: check required keys and types (hand-written
  schema below, no dependency).
* :func:`render_html`: one self-contained page (plots are base64 PNGs drawn with matplotlib's
  Agg canvas; no external assets), rendered from the JSON alone.
* :func:`write_report` / :func:`load_report`: atomic writes (temp file + rename), one-line errors.
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xoresnet.files import read_bounded
from xoresnet.errors import XoresnetError

SCHEMA = "xoresnet-report"
#: ``version`` changes when a field is removed or retyped (a reader refuses other versions);
#: ``minor`` when keys are added (:data:`ADDED_IN_MINOR`; a reader accepts newer minors).
VERSION = 1
MINOR = 3
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


class ReportError(XoresnetError):
    """A missing, unreadable or invalid report.json (bad input file: exit code 3)."""

    exit_code = 3


# ---------------------------------------------------------------------- schema

def _t(kind: str, nullable: bool = False) -> dict:
    return {"type": kind, "nullable": nullable}


STR, INT, NUM, BOOL, ANY = _t("str"), _t("int"), _t("num"), _t("bool"), _t("any")
OSTR, OINT, ONUM, OBOOL = _t("str", True), _t("int", True), _t("num", True), _t("bool", True)


def obj(keys: dict, optional: Optional[dict] = None, nullable: bool = False) -> dict:
    return {"type": "object", "keys": keys, "optional": optional or {}, "nullable": nullable}


def arr(items: dict, nullable: bool = False) -> dict:
    return {"type": "list", "items": items, "nullable": nullable}


def mapping(values: dict) -> dict:
    return {"type": "map", "values": values, "nullable": False}


MOMENTS = obj({"mean": NUM, "std": NUM, "max": NUM})
FINDING = obj({"layer": STR, "limit": STR, "value": NUM, "limit_value": ANY, "message": STR, "estimate": BOOL})
LIMIT = obj({"name": STR, "value": ANY, "unit": STR, "source": STR, "estimate": BOOL, "description": STR,
             "enforced": BOOL})
SYSTEM = obj({"name": STR, "key": STR, "chips": INT, "source": STR, "estimate": BOOL})
LAYER_RES = obj({"name": STR, "kind": STR, "op": OSTR, "block": OSTR, "neurons": INT, "latency": OINT,
                 "synapses": INT, "synmem_bits": INT, "fan_in_max": INT, "fan_out_max": INT, "weight_bits": INT,
                 "sign_modes": arr(STR), "delay_max": INT, "cores": INT, "fragments": INT, "axons_in_max": INT,
                 "axons_out_max": INT})
SYN_RES = obj({"name": STR, "src": STR, "dst": STR, "kind": STR, "synapses": INT, "fan_in_max": INT,
               "fan_out_max": INT, "weight_bits": INT, "sign_mode": STR, "max_abs_weight": INT, "delay": INT,
               "graded": BOOL, "index_bits": INT, "delay_bits": INT, "bits_per_synapse": INT, "synmem_bits": INT})
PACKING = obj({
    "method": STR, "cores": INT, "chips": INT, "cores_per_chip": INT, "cores_per_layer": mapping(INT),
    "systems": arr(obj({"name": STR, "key": STR, "chips": INT, "cores": INT, "fits": BOOL, "chips_needed": INT,
                        "core_utilization": NUM, "estimate": BOOL})),
    "core_table": arr(obj({"core": INT, "chip": INT, "layers": arr(STR), "fragments": arr(arr(ANY)),
                           "neurons": INT, "synmem_bits": INT, "axons_in": INT, "axons_out": INT})),
    "core_table_truncated": BOOL})
STAT_LAYER = obj({"name": STR, "kind": STR, "op": OSTR, "block": OSTR, "neurons": INT, "spikes_total": NUM,
                  "spikes_per_sample": MOMENTS, "firing_rate": NUM, "synops_in_per_sample": NUM,
                  "synops_out_per_sample": NUM})
BLOCK = obj({"name": STR, "merge": STR, "selection": BOOL, "block_input": arr(STR), "backbone": arr(STR, True),
             "shortcut": arr(STR, True), "output": arr(STR), "block_input_spikes": NUM, "output_spikes": NUM,
             "backbone_spikes": ONUM, "shortcut_spikes": ONUM, "merge_absorbed": ONUM, "redundant": ONUM,
             "xor_removed": ONUM, "xor_added": ONUM, "or_saturation": ONUM, "coincidence_rate": ONUM,
             "xor_removed_fraction": ONUM, "branch_balance": ONUM})
ACCURACY = obj({"float": ONUM, "integer": ONUM, "samples": INT, "difference": ONUM})
LATENCY = obj({"timesteps": INT, "scheduled": BOOL, "reset_interval": OINT, "max_population_latency": OINT,
               "readout_latency": OINT, "latency_steps": OINT, "steps_per_sample": OINT})
ENERGY_MODEL = obj({"label": STR, "total_pj": NUM, "total_uj": NUM, "breakdown_pj": mapping(NUM),
                    "counts": mapping(NUM), "per_op_pj": mapping(NUM)})
LAVA = obj({"run_config": STR, "samples": INT, "timesteps": INT, "steps": INT, "seconds": NUM,
            "layers": arr(obj({"name": STR, "spikes_per_sample": arr(INT), "reference_spikes_per_sample": arr(INT),
                               "equal": BOOL})),
            "equal": BOOL, "predictions": arr(INT), "reference_predictions": arr(INT)}, nullable=True,
           optional={"process_models": mapping(obj({"model": STR, "origin": STR, "processes": INT}))})

REPORT_SCHEMA = obj({
    "schema": STR, "version": INT, "created": STR,
    "generator": obj({"package": STR, "version": STR}),
    "model": obj({"name": OSTR, "checkpoint": OSTR, "sha256": OSTR, "config": obj({}, nullable=True),
                  "timesteps": INT, "input_shape": arr(INT), "num_classes": INT, "graph": obj({})}),
    "dataset": obj({"name": OSTR, "split": OSTR, "samples": INT}),
    "target": obj({"name": STR, "description": STR, "has_hardware": BOOL, "dispatch_available": BOOL,
                   "dispatch_note": STR, "limits": mapping(LIMIT), "systems": arr(SYSTEM), "notes": arr(STR)}),
    "drc": obj({"target": STR, "system": OSTR, "passed": BOOL, "violations": arr(FINDING), "warnings": arr(FINDING),
                "layers": arr(LAYER_RES), "synapses": arr(SYN_RES), "packing": PACKING, "synmem_model": STR,
                "systems_fit": arr(STR)}),
    "statistics": obj({"samples": INT, "timesteps": INT, "layers": arr(STAT_LAYER),
                       "totals": obj({"neurons": INT, "spikes_per_sample": MOMENTS, "synops_per_sample": MOMENTS,
                                      "graded_input_ops_per_sample": MOMENTS, "input_spikes_per_sample": NUM,
                                      "readout_synops_per_sample": NUM, "neuron_updates_per_sample": INT,
                                      "active_neuron_updates_per_sample": NUM,
                                      "inactive_neuron_updates_per_sample": NUM, "firing_rate": NUM}),
                       "blocks": arr(BLOCK), "synops_per_synapse": mapping(NUM), "accuracy": ACCURACY,
                       "latency": LATENCY}),
    "energy": obj({"loihi": ENERGY_MODEL, "ann": ENERGY_MODEL, "snn_ac": ENERGY_MODEL,
                   "ann_macs": obj({"total": INT, "input": INT, "per_synapse": mapping(INT)}),
                   "assumptions": arr(STR), "table": obj({}), "calibration_points": arr(obj({}))}),
    "accuracy": ACCURACY,
    "latency": LATENCY,
    "parity": obj({"passed": BOOL, "samples": INT, "summary": STR}, nullable=True),
    "raster": obj({"sample": INT, "timesteps": INT, "cap": INT,
                   "populations": mapping(obj({"neurons": INT, "t": arr(INT), "n": arr(INT), "total": INT,
                                               "truncated": BOOL}))}, nullable=True),
    "warnings": arr(STR),
}, optional={"minor": INT})
FAN_IN_SPLIT = obj({"layer": STR, "neurons": INT, "reason": STR, "need": NUM,
                    "parts": arr(obj({"inputs": arr(obj({"synapse": STR, "start": INT, "stop": INT})), "cores": INT,
                                      "axons_in": INT, "synmem_units": NUM})),
                    "sum_cores": INT, "payload_bits": INT, "extra_latency": INT, "partial_cores": INT, "cores": INT},
                   optional={"built": BOOL})  # built: since 1.3
ARCHITECTURE_CHECK = obj({"passed": BOOL, "extreme": STR, "cores": INT, "chips": INT, "lower_bound": NUM,
                          "bound_ratio": NUM, "smallest_system": OSTR, "fan_in_splits": INT, "seconds": NUM,
                          "violations": arr(STR), "narrowest_cores": OINT}, nullable=True)
#: Keys added by each minor version, by the path of the object they are added to (``()``: the top
#: level; a list or map on the path stands for its items): required in reports of that minor or
#: later, checked when present in older ones.
ADDED_IN_MINOR = {
    1: {(): {"lava": LAVA}},
    2: {(): {"architecture_check": ARCHITECTURE_CHECK},
        ("drc", "layers"): {"tile": arr(INT, True), "synmem_units_max": NUM, "core_memory_max": NUM,
                            "lower_bound": NUM, "fan_in_split": BOOL},
        ("drc", "violations"): {"source": STR, "evidence": STR, "warning": BOOL},
        ("drc", "warnings"): {"source": STR, "evidence": STR, "warning": BOOL},
        ("drc", "packing"): {"lower_bound": NUM, "bound_ratio": NUM, "smallest_system": OSTR,
                             "fan_in_splits": arr(FAN_IN_SPLIT), "cost_model": mapping(LIMIT)},
        ("target", "limits"): {"evidence": STR},
        ("target", "systems"): {"evidence": STR}},
    3: {("drc", "layers"): {"parts": INT},
        ("drc", "packing"): {"partitions": obj({"cut_populations": INT, "parts": INT, "populations": INT})}},
}


def _schema(minor: int) -> dict:
    """:data:`REPORT_SCHEMA` as it stands in minor version ``minor``."""
    root = copy.deepcopy(REPORT_SCHEMA)
    for m, additions in ADDED_IN_MINOR.items():
        for path, added in additions.items():
            node = root
            for key in path:
                node = node["keys"][key]
                while node["type"] in ("list", "map"):
                    node = node["items"] if node["type"] == "list" else node["values"]
            (node["keys"] if m <= minor else node["optional"]).update(added)
    return root


def _type_ok(v: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "num":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind in ("object", "map"):
        return isinstance(v, dict)
    if kind == "list":
        return isinstance(v, list)
    raise AssertionError(kind)


_NAMES = {"str": "a string", "bool": "a boolean", "int": "an integer", "num": "a finite number",
          "object": "an object", "map": "an object", "list": "a list"}


def _check(v: Any, node: dict, path: str, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if v is None:
        if not node.get("nullable"):
            out.append(f"{path}: must not be null")
        return
    kind = node["type"]
    if not _type_ok(v, kind):
        out.append(f"{path}: expected {_NAMES.get(kind, kind)}, got {type(v).__name__}")
        return
    if kind == "object":
        for k, sub in node["keys"].items():
            if k not in v:
                out.append(f"{path}.{k}: required key is missing")
            else:
                _check(v[k], sub, f"{path}.{k}", out, limit)
        for k, sub in node["optional"].items():
            if k in v:
                _check(v[k], sub, f"{path}.{k}", out, limit)
    elif kind == "map":
        for k, x in v.items():
            _check(x, node["values"], f"{path}[{k!r}]", out, limit)
    elif kind == "list":
        for i, x in enumerate(v):
            _check(x, node["items"], f"{path}[{i}]", out, limit)


def report_problems(report: Any, limit: int = 20) -> list[str]:
    """Every problem (up to ``limit``) of ``report`` against schema version 1 (any minor: a report
    without ``minor`` is 1.0); empty when valid."""
    out: list[str] = []
    if not isinstance(report, dict):
        return [f"report: expected an object, got {type(report).__name__}"]
    if report.get("schema") != SCHEMA:
        out.append(f"report.schema: expected {SCHEMA!r}, got {report.get('schema')!r}")
    if report.get("version") != VERSION:
        out.append(f"report.version: this reader knows version {VERSION}, got {report.get('version')!r}")
    minor = report.get("minor", 0)
    if not _type_ok(minor, "int") or minor < 0:
        out.append(f"report.minor: expected a non-negative integer, got {minor!r}")
        minor = 0
    _check(report, _schema(minor), "report", out, limit)
    if not out and report.get("lava"):
        out += _lava_problems(report["lava"])
    raster = report.get("raster")
    if not out and raster:
        for name, r in raster["populations"].items():
            if len(r["t"]) != len(r["n"]):
                out.append(f"report.raster.populations[{name!r}]: t and n differ in length")
            elif r["t"] and (min(r["t"]) < 0 or max(r["t"]) >= raster["timesteps"] or min(r["n"]) < 0
                             or max(r["n"]) >= r["neurons"]):
                out.append(f"report.raster.populations[{name!r}]: spike index out of range")
    return out[:limit]


def _lava_problems(lava: dict) -> list[str]:
    """Consistency of a (well-typed) ``lava`` section: one count per sample, ``equal`` as stated."""
    out = []
    for i, layer in enumerate(lava["layers"]):
        where = f"report.lava.layers[{i}]"
        if len(layer["spikes_per_sample"]) != lava["samples"] or \
                len(layer["reference_spikes_per_sample"]) != lava["samples"]:
            out.append(f"{where}: expected {lava['samples']} counts per sample")
        elif layer["equal"] != (layer["spikes_per_sample"] == layer["reference_spikes_per_sample"]):
            out.append(f"{where}.equal: does not match the counts")
    if not out and lava["equal"] != all(layer["equal"] for layer in lava["layers"]):
        out.append("report.lava.equal: does not match the layers")
    return out


def validate_report(report: Any) -> dict:
    """Return ``report`` if it is a valid version-1 report, else raise :class:`ReportError` (one line)."""
    problems = report_problems(report)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ReportError(f"invalid report: {problems[0]}{more}")
    return report


# ---------------------------------------------------------------------- building

def jsonable(x: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, tuples to lists, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, Path):
        return str(x)
    return x


def model_section(graph, *, checkpoint=None, name: Optional[str] = None) -> dict[str, Any]:
    """The ``model`` section: from a :class:`xoresnet.checkpoint.Checkpoint` (if given) and the graph."""
    cfg = getattr(checkpoint, "config", None)
    return {
        "name": name or (cfg.arch if cfg is not None else None),
        "checkpoint": str(checkpoint.path) if getattr(checkpoint, "path", None) else None,
        "sha256": getattr(checkpoint, "sha256", None),
        "config": cfg.to_dict() if cfg is not None else None,
        "timesteps": int(graph.timesteps),
        "input_shape": [int(v) for v in graph.input_shape],
        "num_classes": int(graph.num_classes),
        "graph": graph.describe(),
    }


def _stat_warnings(stats: dict[str, Any]) -> list[str]:
    out = []
    for l in stats["layers"]:
        if stats["samples"] and l["spikes_total"] == 0:
            out.append(f"layer {l['name']} never fired on the {stats['samples']} samples")
        elif l["firing_rate"] > 0.9:
            out.append(f"layer {l['name']} fires at {100 * l['firing_rate']:.0f}% of neuron-steps (saturated)")
    acc = stats["accuracy"]
    if acc["difference"] is not None and acc["difference"] < -0.01:
        out.append(f"integer accuracy {100 * acc['integer']:.2f}% is {100 * -acc['difference']:.2f} points below "
                   f"the float model's {100 * acc['float']:.2f}%")
    return out


def parity_section(parity: Any) -> Optional[dict[str, Any]]:
    """The ``parity`` section from ``None``, a dict with ``passed``/``samples``/``summary``, or a parity
    report object (``deploy.parity.ParityReport``: ``passed``, ``samples``, ``summary()``, ``to_dict()``)."""
    if parity is None:
        return None
    if isinstance(parity, dict):
        d = dict(parity)
    else:
        d = parity.to_dict() if hasattr(parity, "to_dict") else {}
        for k in ("passed", "samples", "summary"):
            if k not in d and hasattr(parity, k):
                v = getattr(parity, k)
                d[k] = v() if callable(v) else v
    if not {"passed", "samples", "summary"} <= set(d):
        raise ValueError("parity must be None, a dict with 'passed', 'samples' and 'summary', or a parity report")
    return d


def lava_section(graph, lava, reference) -> dict[str, Any]:
    """The ``lava`` section: per population, the spikes the Lava run ``lava``
    (:class:`~deploy.lava_run.LavaRunResult`) recorded in each sample's window, beside those of the
    reference's Loihi-timing stream ``reference`` (:class:`~deploy.reference.StreamResult`, one
    stream) on the same samples (:func:`~hw_targets.stats.window_spike_counts`)."""
    from deploy.lava_worker import RUN_CONFIGS

    from .stats import window_spike_counts

    got, ref = window_spike_counts(graph, lava), window_spike_counts(graph, reference)
    layers = [{"name": name, "spikes_per_sample": got[name], "reference_spikes_per_sample": ref[name],
               "equal": got[name] == ref[name]} for name in graph.populations]
    return {"run_config": RUN_CONFIGS[lava.run_config][1], "process_models": dict(lava.process_models),
            "samples": int(lava.samples),
            "timesteps": int(lava.timesteps), "steps": int(lava.steps), "seconds": round(float(lava.seconds), 2),
            "layers": layers, "equal": all(layer["equal"] for layer in layers),
            "predictions": [int(x) for x in lava.predictions()],
            "reference_predictions": [int(x) for x in reference.predictions()[0]]}


def build_report(*, graph, target, drc, stats: dict[str, Any], energy: dict[str, Any], raster: Optional[dict],
                 model: dict[str, Any], dataset: Optional[dict[str, Any]] = None, parity: Any = None,
                 lava: Optional[dict[str, Any]] = None, warnings: Optional[list[str]] = None,
                 architecture: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Assemble a version-1.2 report (validated) from its parts; ``lava``: :func:`lava_section` or None;
    ``architecture``: the design-rule check before calibration
    (``deploy.pipeline.ArchitectureCheck.to_dict()``) or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("xoresnet")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        pkg_version = "unknown"
    parity = parity_section(parity)
    all_warnings = [f.message for f in drc.warnings] + _stat_warnings(stats) + list(warnings or [])
    if parity is None:
        all_warnings.append("parity was not run: the Lava simulation has not been compared with the integer "
                            "reference for this export")
    elif not parity["passed"]:
        all_warnings.append(f"parity FAILED: {parity['summary']}")
    silent = (parity or {}).get("coverage", {}).get("silent_populations") or []
    if silent:
        all_warnings.append(f"{len(silent)} population(s) silent in every parity image, so parity says nothing about "
                            f"them: {', '.join(silent)}")
    if lava is not None and not lava["equal"]:
        all_warnings.append("Lava's spike counts per sample differ from the integer reference's in "
                            + ", ".join(layer["name"] for layer in lava["layers"] if not layer["equal"]))
    report = {
        "schema": SCHEMA, "version": VERSION, "minor": MINOR,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "generator": {"package": "xoresnet", "version": pkg_version},
        "model": model,
        "dataset": dataset or {"name": None, "split": None, "samples": stats["samples"]},
        "target": target.describe(),
        "drc": drc.to_dict(),
        "statistics": stats,
        "energy": energy,
        "accuracy": stats["accuracy"],
        "latency": stats["latency"],
        "parity": parity,
        "lava": lava,
        "architecture_check": architecture,
        "raster": raster,
        "warnings": all_warnings,
    }
    return validate_report(jsonable(report))


def make_report(graph, pixels, labels=None, *, target="loihi2", float_accuracy: Optional[float] = None,
                checkpoint=None, model_name: Optional[str] = None, dataset: Optional[dict[str, Any]] = None,
                parity: Any = None, system: Optional[str] = None, energy_table=None,
                batch_size: int = 150, device: str = "cpu", warnings: Optional[list[str]] = None) -> dict[str, Any]:
    """DRC + packing, statistics (one zero-delay reference run over ``pixels``), energy, report."""
    from . import get_target
    from .energy import estimate_energy
    from .connectivity import connectivity
    from .design_rules import check_design_rules
    from .stats import collect_statistics

    tgt = get_target(target) if target is None or isinstance(target, str) else target
    conns = connectivity(graph)
    drc = check_design_rules(graph, tgt, system=system, conns=conns)
    stats, acc = collect_statistics(graph, pixels, labels, float_accuracy=float_accuracy, batch_size=batch_size,
                                    device=device, conns=conns)
    energy = estimate_energy(stats, graph, energy_table)
    ds = dict(dataset or {})
    ds.setdefault("name", None)
    ds.setdefault("split", None)
    ds["samples"] = stats["samples"]
    return build_report(graph=graph, target=tgt, drc=drc, stats=stats, energy=energy, raster=acc.raster,
                        model=model_section(graph, checkpoint=checkpoint, name=model_name), dataset=ds,
                        parity=parity, warnings=warnings)


# ---------------------------------------------------------------------- files

def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def dumps_report(report: dict) -> str:
    return json.dumps(report, indent=1, allow_nan=False) + "\n"


def write_report(out_dir: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    """Validate ``report`` and write ``out_dir/report.json`` and ``out_dir/report.html`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = validate_report(jsonable(report))
    page = render_html(report)
    jpath, hpath = out / REPORT_JSON, out / REPORT_HTML
    _atomic_write(jpath, dumps_report(report))
    _atomic_write(hpath, page)
    return jpath, hpath


#: The largest report.json read back (XOResNet-101's is a few MB).
MAX_REPORT_BYTES = 256 << 20


def load_report(path: str | os.PathLike) -> dict:
    """Read and validate a report.json (a directory means ``DIR/report.json``; a regular file of at most
    :data:`MAX_REPORT_BYTES`); :class:`ReportError` else."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    try:
        text = read_bounded(p, what=str(p), limit=MAX_REPORT_BYTES, error=ReportError).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReportError(f"{p} cannot be read ({type(e).__name__}: {e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ReportError(f"{p} is JSON nested too deeply for a report") from None
    try:
        return validate_report(data)
    except ReportError as e:
        raise ReportError(f"{p}: {e}") from None


# ---------------------------------------------------------------------- HTML

_KIND_COLORS = {"neuron": "#3b6fb6", "gate": "#e08a2c", "relay": "#9a9a9a", "readout": "#5a9e5a"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _bar_per_layer(names: list[str], values: list[float], kinds: list[str], xlabel: str, title: str,
                   fmt: str) -> str:
    fig = _figure(6.2, max(2.2, 0.24 * len(names) + 1.0))
    ax = fig.add_subplot(111)
    y = np.arange(len(names))
    ax.barh(y, values, color=[_KIND_COLORS.get(k, "#777") for k in kinds])
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    top = max(values, default=0) or 1
    for yi, v in zip(y, values):
        ax.text(v + top * 0.01, yi, fmt.format(v), va="center", fontsize=6)
    ax.set_xlim(0, top * 1.15)
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in _KIND_COLORS.items() if k in kinds]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.9 / fig.get_figheight()),
              ncol=len(handles), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_firing_rates(report: dict) -> str:
    layers = report["statistics"]["layers"]
    return _bar_per_layer([l["name"] for l in layers], [l["firing_rate"] for l in layers],
                          [l["kind"] for l in layers], "firing rate (spikes per neuron per timestep)",
                          "Firing rate per layer", "{:.3f}")


def plot_cores(report: dict) -> str:
    layers = report["drc"]["layers"]
    return _bar_per_layer([l["name"] for l in layers], [l["cores"] for l in layers], [l["kind"] for l in layers],
                          "neuro-cores (one layer tile per core)", "Cores per layer", "{:.0f}")


_ENERGY_COLORS = {"synaptic_ops": "#3b6fb6", "graded_input_ops": "#7fa7dd", "neuron_updates_active": "#d9534f",
                  "neuron_updates_inactive": "#f0a6a4", "spike_messages": "#5a9e5a", "macs": "#8e6bb8",
                  "accumulates": "#e08a2c", "input_macs": "#c9a227"}


def plot_energy(report: dict) -> str:
    e = report["energy"]
    models = [("Loihi (Loihi-1-calibrated est.)", e["loihi"]), ("ANN, 45 nm MACs", e["ann"]),
              ("SNN accumulates, 45 nm", e["snn_ac"])]
    fig = _figure(7.0, 2.8)
    ax = fig.add_subplot(111)
    seen = set()
    totals = []
    for i, (label, m) in enumerate(models):
        left = 0.0
        for op, pj in m["breakdown_pj"].items():
            nj = pj / 1000.0
            ax.barh(i, nj, left=left, color=_ENERGY_COLORS.get(op, "#777"),
                    label=op.replace("_", " ") if op not in seen else None)
            seen.add(op)
            left += nj
        totals.append(left)
    top = max(totals) or 1
    for i, v in enumerate(totals):
        ax.text(v + top * 0.01, i, f"{v:,.1f} nJ", va="center", fontsize=8)
    ax.set_yticks(range(len(models)), [m[0] for m in models], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.2)
    ax.set_xlabel("energy per inference (nJ)")
    ax.set_title("Energy per inference by operation type (estimates)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def raster_populations(report: dict, max_panels: int = 12) -> list[str]:
    """Which populations the raster shows: neurons and block outputs, skipping relays and AND parts."""
    r = report.get("raster") or {}
    pops = r.get("populations", {})
    kinds = {l["name"]: l["kind"] for l in report["statistics"]["layers"]}
    names = [n for n in pops if kinds.get(n) != "relay" and not n.endswith(".and")]
    if len(names) > max_panels:
        idx = np.unique(np.linspace(0, len(names) - 1, max_panels).round().astype(int))
        names = [names[i] for i in idx]
    return names


def plot_raster(report: dict) -> Optional[str]:
    r = report.get("raster")
    if not r:
        return None
    names = raster_populations(report)
    if not names:
        return None
    kinds = {l["name"]: l["kind"] for l in report["statistics"]["layers"]}
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.0 * cols, 2.6 * rows)
    T = r["timesteps"]
    for i, name in enumerate(names):
        p = r["populations"][name]
        ax = fig.add_subplot(rows, cols, i + 1)
        ms = 2.0 if p["neurons"] <= 2048 else 1.0
        ax.plot(p["t"], p["n"], ls="", marker="_", ms=6, mew=ms * 0.6, color=_KIND_COLORS.get(kinds.get(name), "k"))
        ax.set_xlim(-0.5, T - 0.5)
        ax.set_ylim(-0.5, p["neurons"] - 0.5)
        ax.set_xticks(range(T))
        ax.invert_yaxis()
        trunc = f", {len(p['t'])} shown (subsampled)" if p["truncated"] else ""
        ax.set_title(f"{name}\n{p['total']} spikes / {p['neurons']} neurons{trunc}", fontsize=7)
        ax.tick_params(labelsize=6)
        if i % cols == 0:
            ax.set_ylabel("neuron (C,H,W flat)", fontsize=7)
        if i >= (rows - 1) * cols:
            ax.set_xlabel("timestep", fontsize=7)
    fig.suptitle(f"Spike raster of sample {r['sample']} (zero-delay integer reference)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "&ndash;"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return _e(x)


def _pct(x: Optional[float]) -> str:
    return "&ndash;" if x is None else f"{100 * x:.2f}%"


def _energy_str(pj: float) -> str:
    if pj >= 1e6:
        return f"{pj / 1e6:.3g} &micro;J"
    if pj >= 1e3:
        return f"{pj / 1e3:.3g} nJ"
    return f"{pj:.3g} pJ"


_SIGN = {"mixed": "&plusmn;", "excitatory": "+", "inhibitory": "&minus;"}


def _table(headers: list[str], rows: list[list[str]], cls: str = "", left: int = 1) -> str:
    """A table; the first ``left`` columns (text) are left-aligned, the others (numbers) right-aligned."""
    def cell(tag: str, i: int, c: str) -> str:
        return f"<{tag} class='l'>{c}</{tag}>" if i < left else f"<{tag}>{c}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return (f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#222;font-size:14px}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 2px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc;padding-bottom:4px}
.meta{color:#555;font-size:12px;margin-bottom:12px;overflow-wrap:anywhere}
.verdict{border-radius:8px;padding:14px 18px;margin:12px 0;color:#fff;font-size:18px}
.verdict b{font-size:24px;letter-spacing:.5px;margin-right:12px} .verdict small{display:block;font-size:13px;opacity:.95;margin-top:4px}
.pass{background:#2e7d32} .fail{background:#c62828} .notrun{background:#8a6d1a}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(136px,1fr));gap:10px}
.card{background:#fff;border-radius:6px;padding:10px 12px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .k{color:#666;font-size:12px} .card .v{font-size:20px;font-weight:600;margin-top:2px} .card .s{color:#666;font-size:11px;margin-top:2px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:12px} @media(max-width:900px){.grid2{grid-template-columns:1fr}}
.plot{background:#fff;border-radius:6px;padding:8px;box-shadow:0 1px 2px rgba(0,0,0,.08);text-align:center}
.plot img{max-width:100%;height:auto}
.tablewrap{overflow-x:auto;background:#fff;border-radius:6px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
table{border-collapse:collapse;width:100%;font-size:12px}
th,td{padding:4px 7px;border-bottom:1px solid #e6e6e6;text-align:right;white-space:nowrap}
th{background:#eef0f3;white-space:normal;vertical-align:bottom} td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left}
table.wrap td{white-space:normal;text-align:left}
.est{background:#fff3cd;color:#7a5b00;border-radius:3px;padding:0 4px;font-size:10px;margin-left:4px}
.ok{color:#2e7d32;font-weight:600} .bad{color:#c62828;font-weight:600}
ul.findings{background:#fff;border-radius:6px;padding:8px 8px 8px 28px;box-shadow:0 1px 2px rgba(0,0,0,.08);margin:6px 0}
ul.findings li{margin:3px 0} .viol li{color:#b71c1c}
footer{color:#777;font-size:11px;margin-top:30px}
"""


#: Samples shown as columns of the Lava table (all of them are in report.json).
LAVA_COLUMNS = 8


def _lava_html(lava: dict) -> str:
    """The Lava section: per population, Lava's spikes in each parity sample's window and whether they
    equal the reference's."""
    N = lava["samples"]
    shown = min(N, LAVA_COLUMNS)
    rows = [[_e(l["name"])] + [_num(c) for c in l["spikes_per_sample"][:shown]]
            + [_num(sum(l["spikes_per_sample"])), _num(sum(l["reference_spikes_per_sample"])),
               "<span class='ok'>yes</span>" if l["equal"] else "<span class='bad'>no</span>"]
            for l in lava["layers"]]
    verdict = ("<span class='ok'>equal</span>" if lava["equal"] else "<span class='bad'>not equal</span>")
    more = f" (the first {shown} shown; all {N} in report.json)" if N > shown else ""
    origin = {"xoresnet": "ours, proved equal to Intel's", "lava": "Intel's, as lava-nc ships it"}
    models = "; ".join(f"{_e(cls)} x{m['processes']}: {_e(m['model'])} ({origin.get(m['origin'], _e(m['origin']))})"
                       for cls, m in (lava.get("process_models") or {}).items())
    return (f"<h2>Lava on the {N} parity samples</h2><p class='meta'>{_e(lava['run_config'])}: {lava['steps']} "
            f"steps in {_num(lava['seconds'])} s" + (f". Process models that ran: {models}" if models else "")
            + f". Spikes per population in each sample's {lava['timesteps']}-step "
            f"window, as Lava recorded them{more}; per sample {verdict} to the integer reference's. Predictions: "
            f"Lava {_e(lava['predictions'])}, reference {_e(lava['reference_predictions'])}.</p>"
            + _table(["layer"] + [f"sample {n}" for n in range(shown)]
                     + [f"Lava total ({N})", f"reference total ({N})", "equal per sample"], rows))


def _resources_html(r: dict) -> str:
    """Lower bound, fan-in splits, the check before calibration and the cost model (reports >= 1.2)."""
    pk, arch = r["drc"]["packing"], r.get("architecture_check")
    if "lower_bound" not in pk:
        return ""
    est = '<span class="est">estimate</span>'
    out = [f"<p class='meta'>{pk['cores']:,} cores on {pk['chips']} chip(s) of {pk['cores_per_chip']} cores; smallest "
           f"system that fits: {_e(pk['smallest_system'] or 'none')}. Lower bound {pk['lower_bound']:,.1f} cores; the "
           f"packing is {pk['bound_ratio']:.2f}x the bound.{est}</p>"]
    if pk.get("partitions"):
        cut = pk["partitions"]
        out.append(f"<p class='meta'>Core plan: {cut['cut_populations']:,} of {cut['populations']:,} populations cut into "
                   f"channel parts ({cut['parts']:,} Lava population processes), each part tiled by lava-loihi's rule; "
                   "the Lava lowering builds exactly these parts.</p>")
    if arch:
        verdict = "passed" if arch["passed"] else "failed: " + "; ".join(arch["violations"])
        out.append(f"<p class='meta'>Before calibration (every weight at its {_e(arch['extreme'])} precision): "
                   f"{arch['cores']:,} cores on {arch['chips']} chip(s), {arch['bound_ratio']:.2f}x the lower bound "
                   f"{arch['lower_bound']:,.1f}, design rules {_e(verdict)} in {arch['seconds']:.1f} s.</p>")
    if pk["fan_in_splits"]:
        rows = [[_e(sp["layer"]), _e(sp["reason"]), _num(sp["need"]), _num(len(sp["parts"])),
                 "; ".join(", ".join(f"{_e(i['synapse'])} [{i['start']}, {i['stop']})" for i in p["inputs"])
                           for p in sp["parts"]),
                 _num(sp["partial_cores"]), _num(sp["sum_cores"]), _num(sp["payload_bits"]),
                 f"+{sp['extra_latency']}", "built" if sp.get("built") else "found"] for sp in pk["fan_in_splits"]]
        out.append("<h3>Fan-in splits (partial sums relayed as graded spikes, GradedVec)</h3>"
                   + _table(["layer", "budget exceeded", "one neuron needs", "parts", "input ranges (source channels)",
                             "partial-sum cores", "summing cores", "partial-sum bits", "latency", "state"], rows,
                            "wrap", left=5))
    rows = [[_e(c["name"]), _num(c["value"]), _e(c["unit"]), _e(c["evidence"]), _e(c["source"])]
            for c in pk["cost_model"].values()]
    out.append("<h3>SynMem cost model</h3>" + _table(["figure", "value", "unit", "evidence", "source"], rows, "wrap",
                                                      left=5))
    return "".join(out)


def render_html(report: dict) -> str:
    """The self-contained HTML page of a (valid) report."""
    r = report
    m, tgt, drc, st, en = r["model"], r["target"], r["drc"], r["statistics"], r["energy"]
    acc, lat, par = r["accuracy"], r["latency"], r["parity"]
    pk = drc["packing"]
    est = '<span class="est">estimate</span>'
    parts: list[str] = []
    title = f"xoresnet deployment report: {m.get('name') or 'model'} on {tgt['name']}"
    parts.append(f"<h1>{_e(title)}</h1>")
    meta = [f"created {_e(r['created'])}", f"generator {_e(r['generator']['package'])} {_e(r['generator']['version'])}",
            f"schema {_e(r['schema'])} v{r['version']}.{r.get('minor', 0)}"]
    if m.get("checkpoint"):
        meta.append(f"checkpoint {_e(m['checkpoint'])}")
    if m.get("sha256"):
        meta.append(f"sha256 {_e(m['sha256'][:16])}&hellip;")
    ds = r["dataset"]
    meta.append(f"dataset {_e(ds.get('name') or 'unnamed')}{'/' + _e(ds['split']) if ds.get('split') else ''} "
                f"({ds['samples']} samples)")
    parts.append(f'<div class="meta">{" &middot; ".join(meta)}</div>')
    # parity verdict, prominently
    if par is None:
        parts.append('<div class="verdict notrun"><b>PARITY NOT RUN</b>the Lava simulation was not compared with '
                     'the integer reference; hardware dispatch stays blocked<small>run the parity check of the '
                     'export</small></div>')
    else:
        cls, word = ("pass", "PARITY PASSED") if par["passed"] else ("fail", "PARITY FAILED")
        extra = "; ".join(f"{_e(k)}: {_e(v)}" for k, v in par.items()
                          if k not in ("passed", "samples", "summary") and isinstance(v, (str, int, float, bool)))
        parts.append(f'<div class="verdict {cls}"><b>{word}</b>{par["samples"]} samples: {_e(par["summary"])}'
                     + (f"<small>{extra}</small>" if extra else "") + "</div>")
    # cards
    fits = ", ".join(drc["systems_fit"]) or "none"
    cards = [
        ("Accuracy (integer / float)", f"{_pct(acc['integer'])}", f"float {_pct(acc['float'])} on {acc['samples']} "
                                                                   "samples"),
        ("Design rules", f"<span class='{'ok' if drc['passed'] else 'bad'}'>"
                         f"{'passed' if drc['passed'] else str(len(drc['violations'])) + ' violation(s)'}</span>",
         f"{len(drc['warnings'])} warning(s); target {_e(tgt['name'])}"),
        ("Neuro-cores / chips", f"{pk['cores']} / {pk['chips']}",
         f"fits: {_e(fits)}" + (f"; {pk['bound_ratio']:.2f}x the lower bound" if "bound_ratio" in pk else "")),
        ("Latency", f"{_num(lat['latency_steps'])} steps" if lat["latency_steps"] is not None else "&ndash;",
         f"T = {lat['timesteps']}, readout latency {_num(lat['readout_latency'])}, "
         f"a new sample every {_num(lat['steps_per_sample'])} steps"),
        ("Energy / inference, Loihi", _energy_str(en["loihi"]["total_pj"]), "Loihi-1-calibrated estimate"),
        ("Energy, same net as ANN", _energy_str(en["ann"]["total_pj"]), "one forward pass, 45 nm MACs"),
        ("Energy, SNN accumulates", _energy_str(en["snn_ac"]["total_pj"]), "0.9 pJ per synop + input MACs, 45 nm"),
        ("Spikes / inference", _num(st["totals"]["spikes_per_sample"]["mean"]),
         f"firing rate {st['totals']['firing_rate']:.3f}; {_num(st['totals']['synops_per_sample']['mean'])} synops"),
    ]
    parts.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div><div class="s">{s}</div></div>'
        for k, v, s in cards) + "</div>")
    # findings
    if drc["violations"]:
        parts.append("<h2>Design-rule violations</h2><ul class='findings viol'>" + "".join(
            f"<li>{_e(f['message'])}{est if f['estimate'] else ''}</li>" for f in drc["violations"]) + "</ul>")
    if r["warnings"]:
        parts.append("<h2>Warnings</h2><ul class='findings'>" + "".join(f"<li>{_e(w)}</li>" for w in r["warnings"])
                     + "</ul>")
    # plots
    parts.append("<h2>Activity and resources</h2><div class='grid2'>"
                 f"<div class='plot'><img alt='firing rate per layer' src='{plot_firing_rates(r)}'></div>"
                 f"<div class='plot'><img alt='cores per layer' src='{plot_cores(r)}'></div></div>")
    raster = plot_raster(r)
    if raster:
        parts.append(f"<h2>Spike raster</h2><div class='plot'><img alt='spike raster' src='{raster}'></div>")
    parts.append(f"<h2>Energy per inference</h2><div class='plot'><img alt='energy breakdown' src='{plot_energy(r)}'>"
                 "</div>")
    rows = []
    for key, title_ in (("loihi", "Loihi"), ("ann", "ANN"), ("snn_ac", "SNN-AC")):
        mdl = en[key]
        for op, pj in mdl["breakdown_pj"].items():
            rows.append([_e(title_), _e(op.replace("_", " ")), _num(mdl["counts"][op]), _num(mdl["per_op_pj"][op]),
                         _energy_str(pj)])
        rows.append([f"<b>{_e(title_)}</b>", "<b>total</b>", "", "", f"<b>{_energy_str(mdl['total_pj'])}</b>"])
    parts.append(_table(["model", "operation", "count / inference", "pJ / op", "energy"], rows, left=2))
    parts.append("<h3>Assumptions</h3><ul class='findings'>" + "".join(f"<li>{_e(a)}</li>" for a in en["assumptions"])
                 + "</ul>")
    cps = en.get("calibration_points") or []
    if cps:
        parts.append(_table(["calibration point (not used in the estimate)", "inferences/s", "power (W)",
                             "mJ / inference (total)", "mJ / inference (dynamic)", "source"],
                            [[_e(c.get("name")), _num(c.get("inferences_per_s")), _num(c.get("power_total_w")),
                              _num(c.get("energy_total_mj")), _num(c.get("energy_dynamic_mj")),
                              _e(c.get("source"))] for c in cps], "wrap", left=6))
    # per-layer table
    stat_by = {l["name"]: l for l in st["layers"]}
    rows = []
    for l in drc["layers"]:
        s = stat_by.get(l["name"])
        tile = l.get("tile")
        rows.append([_e(l["name"]), _e(l["kind"] + (f" ({l['op']})" if l["op"] else "")), _num(l["neurons"]),
                     _num(l["synapses"]), _num(l["synmem_bits"]), _num(l["fan_in_max"]), _num(l["fan_out_max"]),
                     f"{l['weight_bits']} {''.join(_SIGN[m] for m in l['sign_modes'])}" if l["sign_modes"]
                     else "&ndash;",
                     _num(l["delay_max"]), _num(l["latency"]),
                     "&times;".join(str(v) for v in tile) if tile else "&ndash;",
                     _num(l.get("synmem_units_max")), _num(l["cores"]) + (" (split)" if l.get("fan_in_split") else ""),
                     _num(l.get("lower_bound")),
                     _num(s["spikes_per_sample"]["mean"]) if s else "&ndash;",
                     f"{s['firing_rate']:.3f}" if s else "&ndash;",
                     _num(s["synops_in_per_sample"]) if s else _num(st["totals"]["readout_synops_per_sample"])])
    parts.append("<h2>Per-layer resources and activity</h2>")
    parts.append(_table(["layer", "kind", "neurons", "synapses in", f"syn. memory (bits){est}", "max fan-in",
                         "max fan-out", "weight bits", "max delay", "latency", f"tile x&times;y&times;c{est}",
                         f"SynMem units / core{est}", f"cores{est}", "lower bound (cores)", "spikes / sample",
                         "firing rate", "synops in / sample"], rows, left=2))
    parts.append(f"<p class='meta'>Weight bits: stored precision, sign modes &plusmn; mixed, + excitatory, &minus; "
                 f"inhibitory. Max fan-in / fan-out: synapses of the most connected neuron. Synaptic memory model: "
                 f"{_e(drc['synmem_model'])}. Packing: {_e(pk['method'])}. Lower bound: max(neurons / 4,096, SynMem "
                 f"of the distinct weights / 12,000).</p>")
    # systems
    rows = [[_e(s["name"]) + (est if s["estimate"] else ""), _num(s["chips"]), _num(s["cores"]),
             _num(s["chips_needed"]), f"{100 * s['core_utilization']:.2f}%",
             "<span class='ok'>fits</span>" if s["fits"] else "<span class='bad'>does not fit</span>"]
            for s in pk["systems"]]
    parts.append("<h2>Systems</h2>" + _table(["system", "chips", "cores", "chips needed", "core utilisation", ""],
                                               rows))
    parts.append(_resources_html(r))
    # blocks
    if st["blocks"]:
        rows = [[_e(b["name"]), _e(b["merge"]), "yes" if b["selection"] else "no", _num(b["block_input_spikes"]),
                 _num(b["backbone_spikes"]), _num(b["shortcut_spikes"]), _num(b["output_spikes"]),
                 _pct(b["or_saturation"]), _pct(b["coincidence_rate"]), _num(b["xor_removed"]),
                 _pct(b["xor_removed_fraction"]), _num(b["branch_balance"])] for b in st["blocks"]]
        parts.append("<h2>Residual blocks (per sample)</h2>")
        parts.append(_table(["block", "merge", "XOR selection", "input spikes", "backbone spikes", "shortcut spikes",
                             "output spikes", "OR saturation", "coincidence", "XOR removed", "XOR removed / input",
                             "branch balance"], rows, left=2))
        parts.append("<p class='meta'>OR saturation: fraction of OR-merge output spikes where both branches fired. "
                     "Coincidence: coincident / union of the branch spikes. XOR removed: block-input spikes the XOR "
                     "selection cancelled (S AND P). Branch balance: backbone / (backbone + shortcut) spikes into the "
                     "merge (0.5 = balanced). Counts from xoresnet.stats.block_counts.</p>")
    if r.get("lava"):
        parts.append(_lava_html(r["lava"]))
    # limits
    rows = [[_e(l["name"]), _num(l["value"]), _e(l["unit"]), _e(l.get("evidence", "")) + (est if l["estimate"] else ""),
             "yes" if l["enforced"] else "no", _e(l["source"])]
            for l in tgt["limits"].values()]
    parts.append(f"<h2>Target limits: {_e(tgt['name'])}</h2><p class='meta'>{_e(tgt['description'])}. Dispatch: "
                 f"{_e(tgt['dispatch_note'])}. Evidence: CODE read in Lava's source, RUN confirmed by running it, LOG "
                 "printed by Intel's lava-loihi compiler in the lava-dl tutorials, INFER derived from those logs "
                 "(estimate), MEM from memory of a publication (estimate).</p>")
    parts.append(_table(["limit", "value", "unit", "evidence", "enforced", "source"], rows, "wrap", left=6))
    if tgt["notes"]:
        parts.append("<ul class='findings'>" + "".join(f"<li>{_e(n)}</li>" for n in tgt["notes"]) + "</ul>")
    parts.append(f"<footer>Rendered from report.json (schema {_e(r['schema'])} version {r['version']}."
                 f"{r.get('minor', 0)}) by "
                 "hw_targets.report. Figures marked 'estimate' are not verified against Intel's compiler.</footer>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head>"
            f"<body><main>\n{body}\n</main></body></html>\n")
