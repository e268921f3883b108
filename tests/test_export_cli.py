"""``xoresnet-export``: artifacts, the parity certificate, atomic writes and every failure's exit code."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import QAT_DIGITS_MODEL, REPO, same_graph
from deploy import cli as export_cli
from hw_targets.report import validate_report
from xoresnet.checkpoint import load_checkpoint, save_checkpoint
from xoresnet.network import build_network

pytestmark = pytest.mark.lava

MODEL = QAT_DIGITS_MODEL
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


@pytest.fixture
def exported(digits_export):
    """The session's export (conftest :func:`digits_export`: ``--parity-samples 3 --eval-samples 200``):
    ``(folder, the export)``; read-only."""
    return digits_export.out, digits_export


def test_export_writes_every_artifact_with_a_parity_certificate(exported):
    out, r = exported
    assert r.code == 0, r.stderr[-2000:]
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
    # what the verdict covered, and which process models ran, in parity.json, the manifest and on stdout
    coverage = parity["coverage"]
    assert coverage["spikes_compared"] > 0 and 0 < coverage["neurons_spiked_fraction"] <= 1
    assert {k: v for k, v in coverage.items() if k != "spikes_by_population"} == manifest["verdict"]["coverage"]
    assert f"coverage: {coverage['populations_spiked']} of {coverage['populations']} populations spiked" in r.stdout
    ran = manifest["verdict"]["lava_process_models"]
    assert ran == parity["lava_process_models"] == validate_report(json.loads((out / "report.json").read_text())
                                                                   )["lava"]["process_models"]
    assert ran["Conv"]["origin"] == "xoresnet" and ran["RingBuffer"]["origin"] == "lava"
    report = validate_report(json.loads((out / "report.json").read_text()))
    assert report["parity"]["passed"] and report["accuracy"]["integer"] > 0.9
    lava_graph = json.loads((out / "lava_graph.json").read_text())
    assert lava_graph["delays"], "the inserted delays are listed"


def test_dispatch_without_the_hardware_stack_exits_7_before_any_work(tmp_path):
    from hw_targets.loihi2 import missing_loihi2_modules

    out = tmp_path / "d"
    r = run_export(str(MODEL), "--out", str(out), "--parity-samples", "1", "--eval-samples", "20", "--dispatch")
    assert r.returncode == 7, r.stderr
    line = error_line(r.stderr)
    assert "lava-loihi" in line and all(m in line for m in missing_loihi2_modules())
    assert "[1/8]" not in r.stderr and not out.exists()  # nothing was exported: dispatch could never have run
    assert list(tmp_path.iterdir()) == []


def test_summary_compares_accuracies_on_the_same_images(exported):
    """--eval-samples 200 on the QAT model: its float parent is evaluated on the same 200 images."""
    from xoresnet.checkpoint import load_model
    from xoresnet.data import IntImageDataset, load_dataset
    from xoresnet.training import evaluate

    out, r = exported
    m = re.search(r"accuracy on (\d+) test images: Loihi integer ([\d.]+)%, the float model it was fine-tuned "
                  r"from \(models/xoresnet-digits.pt\) ([\d.]+)%", r.stdout)
    assert m, r.stdout
    test = load_dataset("digits", "test", limit=200)
    parent, _ = load_model(REPO / "models" / "xoresnet-digits.pt")
    acc = evaluate(parent, IntImageDataset(test.pixels, test.labels, test.info))["accuracy"]
    report = json.loads((out / "report.json").read_text())
    assert int(m.group(1)) == 200 == report["accuracy"]["samples"]
    assert m.group(2) == f"{100 * report['accuracy']['integer']:.2f}" and m.group(3) == f"{100 * acc:.2f}"


def test_float_baseline_without_the_parent_is_this_checkpoint_on_the_same_images(tmp_path):
    import argparse

    ckpt = load_checkpoint(MODEL)
    ckpt.meta["float_parent"] = {**ckpt.meta["float_parent"], "path": str(tmp_path / "gone.pt")}
    args = argparse.Namespace(checkpoint=str(MODEL), timesteps=None)
    b = export_cli.float_baseline(args, ckpt, None, 0.75, False)
    assert b["accuracy"] == 0.75 and "gone.pt was not found" in b["what"]


def test_manifest_records_the_images_used_and_the_seeds(exported):
    out, _ = exported
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["data"]
    assert manifest["version"] == export_cli.MANIFEST_VERSION
    assert data["test_split_images"] == 450
    assert (data["evaluation_images"], data["parity_images"], data["calibration_images"]) == (200, 3, 64)
    assert data["evaluation"] == "test split, first 200 of 450 images"
    assert data["parity"] == "test split, first 3 of 450 images"
    assert data["seeds"] == {"training": load_checkpoint(MODEL).meta["options"]["seed"], "export": None}
    assert data["randomness"].startswith("none")


def test_report_has_lava_spike_counts_per_parity_sample(exported):
    """The lava section: Lava's spikes per population in each parity sample's window, equal to the
    zero-delay reference's per-sample counts (computed here independently) and flagged so."""
    from calibration.integer_graph import load_integer_graph
    from calibration.reference import ReferenceSimulator
    from xoresnet.data import load_dataset

    out, _ = exported
    report = validate_report(json.loads((out / "report.json").read_text()))
    lava = report["lava"]
    assert report["minor"] >= 1 and lava["samples"] == 3 and lava["equal"]
    # the design rules ran before calibration too, at 8-bit weights: never fewer cores than calibrated
    arch = report["architecture_check"]
    assert arch["passed"] and arch["cores"] >= report["drc"]["packing"]["cores"] and arch["seconds"] > 0
    assert lava["run_config"] == "Loihi2SimCfg(select_tag='fixed_pt')"
    graph = load_integer_graph(out / "integer_graph.h5")
    zero_delay = ReferenceSimulator(graph).run_zero_delay(load_dataset("digits", "test", limit=3).pixels)
    assert [layer["name"] for layer in lava["layers"]] == list(graph.populations)
    for layer in lava["layers"]:
        expected = zero_delay.spikes[layer["name"]].flatten(2).sum((0, 2)).tolist()  # [T, B, ...] -> [B]
        assert layer["spikes_per_sample"] == expected == layer["reference_spikes_per_sample"], layer["name"]
        assert layer["equal"]
    assert sum(sum(layer["spikes_per_sample"]) for layer in lava["layers"]) > 0
    assert lava["predictions"] == lava["reference_predictions"] == json.loads(
        (out / "parity.json").read_text())["predictions"]["reference"]
    assert "Lava on the 3 parity samples" in (out / "report.html").read_text()


def test_report_schema_minor_version_checks_the_lava_section(exported):
    import copy

    from hw_targets.report import report_problems

    report = json.loads((exported[0] / "report.json").read_text())
    bad = copy.deepcopy(report)
    del bad["lava"]
    assert "report.lava: required key is missing" in report_problems(bad)
    old = copy.deepcopy(bad)
    del old["minor"]  # a version 1.0 report: no lava section, still valid
    assert report_problems(old) == []
    bad = copy.deepcopy(report)
    bad["lava"]["layers"][0]["spikes_per_sample"].pop()
    assert any("report.lava.layers[0]: expected 3 counts" in p for p in report_problems(bad))
    bad = copy.deepcopy(report)
    bad["lava"]["layers"][1]["spikes_per_sample"][0] += 1
    assert any("report.lava.layers[1].equal" in p for p in report_problems(bad))
    bad = copy.deepcopy(report)
    bad["minor"] = -1
    assert any("report.minor" in p for p in report_problems(bad))


def test_integer_reference_statistics_show_progress(exported, capsys):
    from calibration.integer_graph import load_integer_graph
    from hw_targets.stats import collect_statistics
    from xoresnet.data import load_dataset

    graph = load_integer_graph(exported[0] / "integer_graph.h5")
    pixels = load_dataset("digits", "test", limit=6).pixels
    collect_statistics(graph, pixels, batch_size=2)
    assert capsys.readouterr().err == ""
    collect_statistics(graph, pixels, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "integer reference" in err and "0/6" in err


@pytest.mark.parametrize("flags,needle", [
    (["--system", "foo"], "argument --system: invalid choice: 'foo'"),
    (["--eval-samples", "-3"], "argument --eval-samples: must be >= 0, got -3"),
    (["--parity-samples", "0"], "argument --parity-samples: must be >= 1, got 0"),
    (["--parity-samples", "-1"], "argument --parity-samples: must be >= 1, got -1"),
    (["--calib-samples", "-5"], "argument --calib-samples: must be >= 1, got -5"),
    (["--calib-samples", "many"], "argument --calib-samples: 'many' is not an integer"),
    (["--timeout", "0"], "argument --timeout: must be > 0, got 0"),
    (["--timeout", "nan"], "argument --timeout: must be > 0, got nan"),
    (["--timesteps", "0"], "argument --timesteps/-T: must be >= 1, got 0"),
    (["--target", "truenorth"], "unknown target 'truenorth'; available: loihi2, lava-sim, onnx"),
    (["--target", "lava-sim", "--dispatch"], "--dispatch needs a target with hardware"),
    (["--out", str(MODEL)], "exists and is not a folder"),
    (["--out", "/proc/xoresnet-test/out"], "cannot create the artifact folder"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_usage_errors_before_any_work(monkeypatch, capsys, flags, needle):
    import xoresnet.checkpoint

    monkeypatch.setattr(xoresnet.checkpoint, "load_model", lambda *a: pytest.fail("work started before the check"))
    with pytest.raises(SystemExit) as e:
        export_cli.export_main([str(MODEL), *flags, "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("xoresnet-export: error: "), err
    assert needle in err
    assert not list(MODEL.parent.glob(".*.partial-*"))


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    ("{", "not valid JSON"),
    ('{"synop": -1}', "synop must be a number of pJ >= 0"),
    ('{"synop": "fast"}', "synop must be a number of pJ >= 0"),
    ('{"hops_per_spike": null}', "hops_per_spike must be a number >= 0"),
    ('{"synapse_op": 1}', "unknown energy table keys: synapse_op"),
    ("[1, 2]", "an energy table is a JSON object"),
])
def test_bad_energy_table_exits_3_before_any_work(monkeypatch, capsys, tmp_path, content, needle):
    import xoresnet.checkpoint

    table = tmp_path / "energy.json"
    if content is not None:
        table.write_text(content)
    monkeypatch.setattr(xoresnet.checkpoint, "load_model", lambda *a: pytest.fail("work started before the check"))
    with pytest.raises(SystemExit) as e:
        export_cli.export_main([str(MODEL), "--energy-table", str(table), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 3 and err.count("\n") == 1 and f"energy table {table}: " in err and needle in err, err


@pytest.mark.parametrize("exe,args", [("xoresnet-export", [str(MODEL), "--system", "foo"]),
                                      ("xoresnet-export", []),
                                      ("xoresnet-report", []),
                                      ("xoresnet-report", ["a", "b"])])
def test_argparse_errors_are_one_line(exe, args):
    r = subprocess.run([str(EXE.parent / exe), *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"{exe}: error: ") and "usage:" not in r.stderr


def test_unknown_target_lists_every_target():
    """Also the lazily registered onnx target, before anything imported it."""
    code = "from hw_targets import get_target\ntry:\n    get_target('tpu')\nexcept Exception as e:\n    print(e)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.stdout.strip() == "unknown target 'tpu'; available: loihi2, lava-sim, onnx", r.stderr


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
    earlier = '{"format": "xoresnet-export", "artifacts": {}}'
    (out / "manifest.json").write_text(earlier)  # an earlier export of ours: replaceable, so no usage error
    r = run_export(str(ckpt), "--target", target, "--out", str(out), "--parity-samples", "1", "--eval-samples", "20")
    assert r.returncode == code, r.stderr
    assert re.search(needle, error_line(r.stderr)), r.stderr
    assert (out / "manifest.json").read_text() == earlier  # a failed export leaves DIR untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"out", "m.pt"} & {"out", ckpt.name}
                                                                if ckpt.exists() else {"out"})  # no leftovers


@pytest.fixture(scope="module")
def perturbed_parity(digits_export):
    """:func:`deploy.pipeline.lava_parity` of the session export's graph on the first 2 test images, with one
    nonzero weight of ``layer1.0.convs.1`` raised by 40 in the Lava run only (the reference keeps the graph's):
    ``(graph, pixels, LavaParity)``. The graph is built once (by :func:`digits_export`); only Lava runs again."""
    from deploy import lava_run
    from deploy.pipeline import lava_parity
    from xoresnet.data import load_dataset

    graph = digits_export.parity_graph
    pixels = load_dataset("digits", "test", limit=2).pixels
    syn = next(s for s in graph.synapses if s.name == "layer1.0.convs.1")
    idx = tuple(int(i) for i in (abs(syn.weight) > 0).nonzero()[0][:1].tolist() + [0, 1, 1])
    real = lava_run.run_lava
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lava_run, "run_lava", lambda g, p, **kw: real(g, p, perturb={"synapse": syn.name, "index": idx,
                                                                                 "delta": 40}, **kw))
        run = lava_parity(graph, pixels, timeout=300)
    return graph, pixels, run


def test_parity_localises_a_perturbed_weight(perturbed_parity):
    """A Lava graph with one perturbed weight: the comparison fails at the population it feeds."""
    _, _, run = perturbed_parity
    assert not run.passed and run.lava.seconds > 0
    assert "parity FAILED" in run.report.summary() and "layer1.0.neurons.1" in run.report.summary()
    assert run.record["passed"] is False and run.record["first_divergence"]["population"] == "layer1.0.neurons.1"


def test_parity_failure_exits_5_and_writes_nothing(tmp_path, monkeypatch, capsys, perturbed_parity):
    """The export whose Lava run fails parity (stage 6 answered with :func:`perturbed_parity`, after checking it
    is asked about the same graph and images): exit 5 naming the divergence, the failure record written beside
    DIR, DIR never created, dispatch blocked."""
    from deploy import pipeline
    from deploy.export_dir import FAILURE_FORMAT, json_text

    graph, pixels, run = perturbed_parity
    asked = []

    def failing(g, p, **kw):
        same_graph(g, graph)
        assert torch.equal(p, pixels)
        asked.append(kw)
        return run

    monkeypatch.setattr(pipeline, "lava_parity", failing)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        export_cli.export_main([str(MODEL), "--out", str(out), "--parity-samples", "2", "--eval-samples", "20",
                                "--no-progress"])
    assert e.value.code == 5 and len(asked) == 1
    err = capsys.readouterr().err
    assert "parity FAILED" in err and "layer1.0.neurons.1" in err and "dispatch is blocked" in err
    assert f"details in {tmp_path / 'out.parity-failure.json'};" in err.strip().splitlines()[-1]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    failure = json.loads((tmp_path / "out.parity-failure.json").read_text())
    assert failure["first_divergence"]["population"] == "layer1.0.neurons.1"
    assert failure == {"format": FAILURE_FORMAT, **json.loads(json_text(run.record))}  # the failed run's record


def test_successful_export_removes_a_stale_parity_failure_file(tmp_path):
    out = tmp_path / "out"
    failed = export_cli.ArtifactDir(out)
    failed.write_failure({"passed": False})
    failed.discard()
    assert failed.failure_file.is_file() and not out.exists()
    ok = export_cli.ArtifactDir(out)
    ok.write_json("parity.json", {"passed": True})
    ok.commit()
    assert (out / "parity.json").is_file() and not failed.failure_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_lava_timeout_exits_6(tmp_path, monkeypatch, capsys, digits_export):
    """A Lava run past ``--timeout``: the session's graph run by :func:`deploy.pipeline.lava_parity` with 0.5 s
    raises exit code 6 with its Lava session stopped; the export that meets it (stage 6 answered with that
    error, after checking it is asked about the same graph with ``--timeout 0.5``) exits 6, one line, DIR not
    created."""
    from deploy import lava_run, pipeline
    from xoresnet.data import load_dataset
    from xoresnet.errors import LavaRunError

    graph = digits_export.parity_graph
    pixels = load_dataset("digits", "test", limit=1).pixels
    with pytest.raises(LavaRunError, match=r"did not finish within 0\.5 s") as timed_out:
        pipeline.lava_parity(graph, pixels, timeout=0.5)
    assert timed_out.value.exit_code == 6 and "\n" not in str(timed_out.value)
    assert lava_run.session_members(timed_out.value.cleanup["session"]) == []

    def too_slow(g, p, **kw):
        same_graph(g, graph)
        assert torch.equal(p, pixels) and kw["timeout"] == 0.5
        raise timed_out.value

    monkeypatch.setattr(pipeline, "lava_parity", too_slow)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        export_cli.export_main([str(MODEL), "--out", str(out), "--parity-samples", "1", "--eval-samples", "20",
                                "--timeout", "0.5", "--no-progress"])
    assert e.value.code == 6
    assert "did not finish within" in error_line(capsys.readouterr().err) and not out.exists()
    assert list(tmp_path.iterdir()) == []


def lava_worker_pids() -> list[int]:
    """Live processes started as ``python -m deploy.lava_worker`` by this environment's Python (the Lava child
    and its forks), not those of other checkouts running their own tests on this machine."""
    ours = [os.fsencode(sys.executable), b"-m", b"deploy.lava_worker"]
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if cmd.split(b"\0")[:3] == ours:
            pids.append(int(entry))
    return pids


def test_ctrl_c_during_the_lava_run_exits_130_and_leaves_nothing(tmp_path):
    """SIGINT to the command's process group (a terminal's Ctrl-C) while Lava runs: exit 130 with one
    line; no Lava process, no orphaned shared-memory segment, no artifact or temporary folder left."""
    from test_lava_lowering import orphaned_new_segments

    assert lava_worker_pids() == []
    before = set(os.listdir("/dev/shm"))
    out = tmp_path / "digits"
    p = subprocess.Popen([str(EXE), str(MODEL), "--out", str(out), "--eval-samples", "20", "--parity-samples", "16",
                          "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    stderr = []
    for line in p.stderr:
        stderr.append(line)
        if line.startswith("[6/8]"):
            break
    deadline = time.time() + 60
    while time.time() < deadline and len(lava_worker_pids()) < 3:  # the runtime has forked its actors
        time.sleep(0.2)
    assert lava_worker_pids(), "Lava did not start"
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGINT)
    _, rest = p.communicate(timeout=120)
    assert p.returncode == 130, "".join(stderr) + rest
    assert rest.strip().splitlines()[-1] == "xoresnet-export: interrupted" and "Traceback" not in rest
    time.sleep(0.5)
    assert lava_worker_pids() == []
    assert orphaned_new_segments(before) == set()
    assert not out.exists() and list(tmp_path.iterdir()) == []
