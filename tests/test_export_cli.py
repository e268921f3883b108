"""``xoresnet-export``: artifacts, the parity certificate, atomic writes and every failure's exit code."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from deploy import cli as export_cli
from hw_targets.report import validate_report
from xoresnet.checkpoint import load_checkpoint, save_checkpoint
from xoresnet.network import build_network

pytestmark = pytest.mark.lava

MODEL = REPO / "models" / "xoresnet-digits-qat.pt"
EXE = Path(sys.executable).parent / "xoresnet-export"


def run_export(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args, "--no-progress"], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def error_line(stderr: str) -> str:
    """The command's error: exactly one line, the last one (stage progress lines come before it)."""
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert "Traceback" not in stderr
    return errors[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "digits"
    r = run_export(str(MODEL), "--target", "loihi2", "--out", str(out), "--parity-samples", "3", "--eval-samples", "200")
    return out, r


def test_export_writes_every_artifact_with_a_parity_certificate(exported):
    out, r = exported
    assert r.returncode == 0, r.stderr[-2000:]
    assert "parity passed" in r.stdout and str(out) in r.stdout
    names = {"model.nir", "integer_graph.h5", "calibration.json", "lava_graph.json", "parity.json", "report.json",
             "report.html", "manifest.json"}
    assert names <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(".digits.partial-*"))  # no temporary folder left behind
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verdict"]["parity"] == "passed" and manifest["verdict"]["dispatch_allowed"]
    assert manifest["checkpoint"]["sha256"] == sha(MODEL)
    for name, digest in manifest["artifacts"].items():
        assert sha(out / name) == digest, name
    assert manifest["versions"]["lava-nc"] == "0.10.0" and manifest["versions"]["torch"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["samples"] == 3 and parity["mismatching_neuron_steps"] == 0
    report = validate_report(json.loads((out / "report.json").read_text()))
    assert report["parity"]["passed"] and report["accuracy"]["integer"] > 0.9
    lava_graph = json.loads((out / "lava_graph.json").read_text())
    assert lava_graph["delays"], "the inserted delays are listed"


def test_dispatch_without_the_hardware_stack_exits_7_after_parity(exported, tmp_path):
    out = tmp_path / "d"
    r = run_export(str(MODEL), "--out", str(out), "--parity-samples", "1", "--eval-samples", "20", "--dispatch")
    assert r.returncode == 7, r.stderr
    assert "lava-loihi" in error_line(r.stderr)
    assert (out / "manifest.json").exists()  # the export itself succeeded; only dispatch is unavailable


@pytest.mark.parametrize("case,code,needle", [
    ("missing", 3, "does not exist"),
    ("corrupt", 3, "corrupt"),
    ("unknown-target", 2, "unknown target"),
    ("soft-reset", 4, "soft reset"),
    ("out-of-range", 4, "outside Loihi 2|does not fit|no scale fits"),
])
def test_bad_inputs_give_one_line_errors(tmp_path, case, code, needle):
    ckpt = tmp_path / "m.pt"
    target = "loihi2"
    if case == "corrupt":
        ckpt.write_bytes(MODEL.read_bytes()[:1000])
    elif case == "unknown-target":
        ckpt = MODEL
        target = "truenorth"
    elif case in ("soft-reset", "out-of-range"):
        c = load_checkpoint(MODEL)
        cfg = c.config
        if case == "soft-reset":
            cfg = cfg.replace(neuron=cfg.neuron.__class__(**{**cfg.neuron.__dict__, "reset": "soft"}))
        model = build_network(cfg)
        model.load_state_dict(c.state_dict)
        if case == "out-of-range":
            with torch.no_grad():
                model.layer1[0].convs[0].bn.bias[0] = 1e9  # a bias no 13+3-bit Loihi register can hold
        save_checkpoint(ckpt, model, {"dataset": "digits"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    r = run_export(str(ckpt), "--target", target, "--out", str(out), "--parity-samples", "1", "--eval-samples", "20")
    assert r.returncode == code, r.stderr
    assert re.search(needle, error_line(r.stderr)), r.stderr
    assert (out / "keep.txt").read_text() == "an earlier export"  # a failed export leaves DIR untouched


def test_parity_failure_exits_5_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """A Lava graph with one perturbed weight: parity fails, localises it, exits 5, DIR untouched."""
    from deploy import lava_run

    real = lava_run.run_lava

    def perturbed(graph, pixels, **kw):
        syn = next(s for s in graph.synapses if s.name == "layer1.0.convs.1")
        idx = tuple(int(i) for i in (abs(syn.weight) > 0).nonzero()[0][:1].tolist() + [0, 1, 1])
        return real(graph, pixels, perturb={"synapse": syn.name, "index": idx, "delta": 40}, **kw)

    monkeypatch.setattr(lava_run, "run_lava", perturbed)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        export_cli.export_main([str(MODEL), "--out", str(out), "--parity-samples", "2", "--eval-samples", "20",
                                "--no-progress"])
    assert e.value.code == 5
    err = capsys.readouterr().err
    assert "parity FAILED" in err and "layer1.0.neurons.1" in err and "dispatch is blocked" in err
    assert not out.exists()
    failure = json.loads((tmp_path / "out.parity-failure.json").read_text())
    assert failure["first_divergence"]["population"] == "layer1.0.neurons.1"


def test_lava_timeout_exits_6(tmp_path):
    out = tmp_path / "out"
    r = run_export(str(MODEL), "--out", str(out), "--parity-samples", "1", "--eval-samples", "20", "--timeout", "0.5")
    assert r.returncode == 6, r.stderr
    assert "did not finish within" in error_line(r.stderr) and not out.exists()
