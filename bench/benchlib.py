"""Helpers shared by the deployment benchmarks in ``bench/`` (not a benchmark itself).

* :func:`machine_info`: CPU model, logical CPUs, RAM, load average (``uptime``), versions;
* :func:`summary`: median / min / max / spread of repeated measurements;
* :func:`random_network_graph` / :func:`digits_graph`: the scheduled integer graphs the
  benchmarks run (setup, never timed);
* :func:`firing_model` / :func:`random_pixels`: re-exported from ``tests/conftest.py``. Importing
  it sets ``torch.set_num_threads(1)`` (a test-suite choice); :func:`import_test_helpers` restores
  the thread count that was in effect before, so a benchmark's ``--threads`` stays in control.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

DIGITS_QAT = REPO / "models" / "xoresnet-digits-qat.pt"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def uptime_line() -> str:
    """The output of ``uptime`` (load averages over 1, 5, 15 minutes)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def code_version() -> dict[str, Any]:
    """The checked-out commit and whether library files differ from it (the repository is shared)."""
    def git(*a) -> str:
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, timeout=10, cwd=REPO).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "xoresnet", "deploy", "calibration", "hw_targets")
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
            "library_modified_files": [ln[3:] for ln in dirty.splitlines() if ln.strip()]}


def machine_info() -> dict[str, Any]:
    import numpy
    import torch

    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "ram_gib": ram_gib(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "torch_threads": torch.get_num_threads(), "uptime_start": uptime_line(), "loadavg_start": load_average(),
            "code": code_version()}
    try:
        from importlib.metadata import version

        info["lava_nc"] = version("lava-nc")
    except Exception:  # noqa: BLE001 - informational only
        info["lava_nc"] = None
    return info


def finish_machine_info(info: dict[str, Any]) -> dict[str, Any]:
    info["uptime_end"] = uptime_line()
    info["loadavg_end"] = load_average()
    return info


def bench_log(quiet: bool):
    """The benches' progress printer: ``print`` flushed, or nothing when ``quiet`` (``--json``)."""
    return (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))


def start_log(machine: dict[str, Any], quiet: bool, suffix: str = ""):
    """:func:`bench_log`, after printing the machine line (plus ``suffix``) and the load at the start."""
    log = bench_log(quiet)
    log(machine_line(machine) + suffix)
    log(f"load at start: {machine['uptime_start']}")
    return log


def machine_line(m: dict[str, Any]) -> str:
    code = m.get("code") or {}
    mod = code.get("library_modified_files") or []
    return (f"machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, {m['ram_gib']} GiB), python {m['python']}, "
            f"torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}, lava-nc {m['lava_nc']}; "
            f"code {code.get('commit')}" + (f" + uncommitted changes in {', '.join(mod)}" if mod else ""))


def load_lines(m: dict[str, Any]) -> str:
    return f"load at start: {m['uptime_start']}\nload at end:   {m.get('uptime_end', '?')}"


def add_network_args(p: argparse.ArgumentParser, *, repeats: int, timeout: float) -> None:
    """The options the Lava benchmarks share: the random-weight networks, the digits model, samples."""
    p.add_argument("--input-size", type=int, default=32, help="input height = width (random-weight networks)")
    p.add_argument("--timesteps", type=int, default=4, help="T (random-weight networks)")
    p.add_argument("--samples", type=int, default=2, help="samples in the Lava stream (Lava is slow)")
    p.add_argument("--repeats", type=int, default=repeats, help="timed rounds over all models (interleaved)")
    p.add_argument("--calib-samples", type=int, default=16, help="calibration images for the random networks (setup)")
    p.add_argument("--digits-checkpoint", default=str(DIGITS_QAT), help="the bundled digits model")
    p.add_argument("--timeout", type=float, default=timeout, help="wall-clock limit of one Lava run (s)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")


def emit_json(result: dict[str, Any], as_json: bool) -> bool:
    """With ``as_json``: print ``result`` as JSON and return True (the caller prints nothing more);
    else print the load at the end of the run and return False."""
    if as_json:
        print(json.dumps(result, indent=2))
        return True
    print(f"load at end:   {result['machine']['uptime_end']}")
    return False


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max, and the spread ``(max - min) / median`` of repeated measurements."""
    v = [float(x) for x in values]
    if not v:
        return {"n": 0, "median": None, "min": None, "max": None, "spread": None, "values": []}
    med = statistics.median(v)
    return {"n": len(v), "median": med, "min": min(v), "max": max(v),
            "spread": (max(v) - min(v)) / med if med else None, "values": v}


def fmt_s(s: dict[str, Any], unit: str = "s", digits: int = 3) -> str:
    """``median (min-max, n=...)``."""
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:.{digits}g} {unit} ({s['min']:.{digits}g}-{s['max']:.{digits}g}, n={s['n']})"


# ---------------------------------------------------------------------- networks (setup, not timed)

def import_test_helpers():
    """``(firing_model, random_pixels)`` from ``tests/conftest.py``, keeping torch's thread count."""
    import torch

    threads = torch.get_num_threads()
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from conftest import firing_model, random_pixels  # noqa: E402  (sets torch threads to 1)

    torch.set_num_threads(threads)
    return firing_model, random_pixels


def random_config(arch: str, width: float, input_size: int = 32, timesteps: int = 4):
    from xoresnet.config import NetworkConfig

    return NetworkConfig.preset(arch, width_factor=width, input_size=input_size, in_channels=3, num_classes=10,
                                timesteps=timesteps)


def random_network_graph(arch: str, width: float, *, input_size: int = 32, timesteps: int = 4, seed: int = 0,
                         calib_samples: int = 16):
    """``(cfg, integer graph)`` of an untrained ``firing_model`` network, calibrated on
    ``calib_samples`` random images and mapped onto Loihi 2's cores as ``xoresnet-export`` maps it
    (:func:`deploy.pipeline.map_to_cores`: scheduled, fan-in splits built, core plan)."""
    from calibration.quantize import calibrate_nir
    from xoresnet.nir.export import export_nir
    from deploy.pipeline import map_to_cores

    firing_model, random_pixels = import_test_helpers()
    cfg = random_config(arch, width, input_size, timesteps)
    model = firing_model(cfg, seed)
    cal = calibrate_nir(export_nir(model), random_pixels(calib_samples, cfg, seed + 1))
    return cfg, map_to_cores(cal.graph, "loihi2").graph


def random_inputs(cfg, n: int, seed: int):
    _, random_pixels = import_test_helpers()
    return random_pixels(n, cfg, seed)


def digits_graph(path: Path = DIGITS_QAT, calib_samples: int = 64):
    """``(cfg, integer graph, test pixels [N, 1, 8, 8])`` of the bundled digits model, as
    ``xoresnet-export`` builds it (a QAT checkpoint keeps its trained scales; mapped onto the cores)."""
    from deploy.pipeline import calibrate_checkpoint, calibration_pixels, map_to_cores
    from xoresnet.checkpoint import load_model
    from xoresnet.data import load_dataset

    model, ckpt = load_model(path)
    dataset = ckpt.meta.get("dataset", "digits")
    cal = calibrate_checkpoint(model, ckpt, calibration_pixels(dataset, None, calib_samples))
    test = load_dataset(dataset, "test")
    return model.config, map_to_cores(cal.graph, "loihi2").graph, test.pixels
