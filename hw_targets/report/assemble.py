"""Assembling ``report.json`` from the pipeline's results (the schema: ``schema.json``).

* :func:`build_report`: assemble the JSON from already computed parts (validated before it is returned);
  :func:`model_section` and :func:`parity_section` build its sections (:func:`deploy.parity.lava_section` the ``lava``
  section from a Lava run and the reference's stream on the parity samples).
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .schema import MINOR, SCHEMA, VERSION, validate_report


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


def build_report(*, graph, target, drc, stats: dict[str, Any], energy: dict[str, Any], raster: Optional[dict],
                 model: dict[str, Any], dataset: Optional[dict[str, Any]] = None, parity: Any = None,
                 lava: Optional[dict[str, Any]] = None, warnings: Optional[list[str]] = None,
                 architecture: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Assemble a report of the newest minor version (validated) from its parts; ``lava``: :func:`deploy.parity.lava_section` or None;
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
