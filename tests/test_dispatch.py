"""Loihi 2 dispatch: gated by the parity certificate the export folder carries, run through the same
child-process runner as the CPU simulation; lava-loihi is mocked as present where a test needs it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import QAT_DIGITS_MODEL, same_graph
from deploy import cli as export_cli
from deploy import lava_run
from deploy.dispatch import run_on_hardware
from hw_targets import get_target, loihi2
from hw_targets.base import HwTarget, NoHardwareError
from xoresnet.files import file_sha256
from xoresnet.data import load_dataset
from xoresnet.errors import DispatchUnavailableError, LavaRunError, ParityError

pytestmark = pytest.mark.lava

MODEL = QAT_DIGITS_MODEL
PARITY_SAMPLES = 3  # those of the session's export (conftest.DIGITS_EXPORT_FLAGS)


def parity_pixels() -> np.ndarray:
    return load_dataset("digits", "test", limit=PARITY_SAMPLES).pixels.numpy().astype(np.int64)


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory, digits_export):
    """``xoresnet-export --dispatch`` (export then dispatch, one command) with lava-loihi mocked as present and a
    Loihi 2 host configured; every ``run_lava`` call is recorded. The parity run (``fixed_pt``) is answered with
    the session export's Lava run (conftest :func:`digits_export`, same flags for the graph) after checking that
    it is asked about the same graph and images; the hardware run (``run_config="hw"``) with that same result.
    Returns ``(out, exit code, stdout, calls)``."""
    out = tmp_path_factory.mktemp("dispatch") / "digits"
    calls: list[dict] = []

    def recording(graph, pixels, **kw):
        calls.append({"graph": graph, "pixels": np.asarray(pixels).copy(), **kw})
        if kw.get("run_config") == "hw":
            sim = next(c["result"] for c in calls if c.get("run_config", "fixed_pt") == "fixed_pt")
            return dataclasses.replace(sim, run_config="hw")
        same_graph(graph, digits_export.parity_graph)
        assert np.array_equal(pixels, digits_export.lava_calls[0]["pixels"])
        calls[-1]["result"] = digits_export.lava
        return calls[-1]["result"]

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loihi2, "missing_loihi2_modules", lambda: [])
        mp.setenv("NXSDKHOST", "loihi2.test")
        mp.setattr(lava_run, "run_lava", recording)
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as e:
            export_cli.export_main([str(MODEL), "--out", str(out), "--parity-samples", str(PARITY_SAMPLES),
                                    "--eval-samples", "20", "--timeout", "300", "--no-progress", "--dispatch"])
    return out, e.value.code, stdout.getvalue(), calls


@pytest.fixture
def certified_dir(digits_export) -> Path:
    """The session's export folder (read-only: copy it before changing it)."""
    return digits_export.out


@pytest.fixture
def loihi_present(monkeypatch):
    """lava-loihi mocked as installed, a host configured, and no run may start."""
    monkeypatch.setattr(loihi2, "missing_loihi2_modules", lambda: [])
    monkeypatch.setenv("NXSDKHOST", "loihi2.test")

    def no_run(*args, **kwargs):
        raise AssertionError("dispatch reached the hardware run")

    monkeypatch.setattr(lava_run, "run_lava", no_run)


def test_dispatch_after_passed_parity_runs_the_exported_graph_on_the_parity_images(dispatched):
    from calibration.integer_graph import load_integer_graph

    out, code, stdout, calls = dispatched
    assert code == 0, stdout
    sim, hw = [c for c in calls if c.get("run_config", "fixed_pt") == "fixed_pt"], \
        [c for c in calls if c.get("run_config") == "hw"]
    assert len(sim) == 1 and len(hw) == 1
    assert np.array_equal(hw[0]["pixels"], parity_pixels()) and np.array_equal(sim[0]["pixels"], parity_pixels())
    assert hw[0]["timeout"] == 300
    exported = load_integer_graph(out / "integer_graph.h5")
    assert hw[0]["graph"].scheduled
    same_graph(hw[0]["graph"], exported)
    assert f"dispatch: Loihi 2 ran {PARITY_SAMPLES} parity images" in stdout
    assert "equal to the integer reference's" in stdout


def test_dispatch_refuses_a_tampered_graph(certified_dir, tmp_path, loihi_present):
    d = tmp_path / "copy"
    shutil.copytree(certified_dir, d)
    with open(d / "integer_graph.h5", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ParityError) as e:
        run_on_hardware(get_target("loihi2"), d, pixels=parity_pixels())
    msg = str(e.value)
    assert e.value.exit_code == 5 and "\n" not in msg
    assert "integer_graph.h5 is not the file the parity certificate covers" in msg and "blocked" in msg


def _rehash(d, name):
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["artifacts"][name] = file_sha256(d / name)
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("case,needle", [
    ("verdict-failed", "verdict is not a passed parity check"),
    ("parity-json-failed", "the parity check failed"),
    ("no-manifest", "no parity certificate"),
    ("parity-json-removed", "parity.json is missing"),
    ("not-covered", "does not cover integer_graph.h5"),
])
def test_dispatch_refuses_without_a_passed_certificate(certified_dir, tmp_path, loihi_present, case, needle):
    d = tmp_path / "copy"
    shutil.copytree(certified_dir, d)
    manifest = json.loads((d / "manifest.json").read_text())
    if case == "verdict-failed":
        manifest["verdict"]["parity"] = "failed"
        (d / "manifest.json").write_text(json.dumps(manifest))
    elif case == "parity-json-failed":  # a consistent certificate of a failed check
        parity = json.loads((d / "parity.json").read_text())
        parity.update(passed=False, summary="parity FAILED: test")
        (d / "parity.json").write_text(json.dumps(parity))
        _rehash(d, "parity.json")
    elif case == "no-manifest":
        (d / "manifest.json").unlink()
    elif case == "parity-json-removed":
        (d / "parity.json").unlink()
    else:
        del manifest["artifacts"]["integer_graph.h5"]
        (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ParityError, match=needle) as e:
        run_on_hardware(get_target("loihi2"), d, pixels=parity_pixels())
    assert e.value.exit_code == 5 and "\n" not in str(e.value)


def test_dispatch_without_lava_loihi_exits_7_naming_the_modules(certified_dir, monkeypatch):
    missing = loihi2.missing_loihi2_modules()
    if not missing:
        pytest.skip("lava-loihi is installed here")
    monkeypatch.setattr(lava_run, "run_lava", lambda *a, **k: pytest.fail("dispatch reached the hardware run"))
    with pytest.raises(DispatchUnavailableError) as e:
        run_on_hardware(get_target("loihi2"), certified_dir, pixels=parity_pixels())
    assert e.value.exit_code == 7 and all(m in str(e.value) for m in missing)


def test_hardware_run_goes_through_the_child_runner(certified_dir):
    """``run_config="hw"`` runs ``Loihi2HwCfg`` in the child of :func:`run_lava`: without lava-loihi
    Lava fails there, which comes back as one line (exit code 6) with the session cleaned up; the
    wall-clock timeout applies as for the CPU simulation."""
    if not loihi2.missing_loihi2_modules():
        pytest.skip("lava-loihi is installed here: this would run on the chip")
    from calibration.integer_graph import load_integer_graph

    graph = load_integer_graph(certified_dir / "integer_graph.h5")
    with pytest.raises(LavaRunError, match=r"^the Loihi 2 run failed \(exit code 1\): ") as e:
        lava_run.run_lava(graph, parity_pixels()[:1], timeout=120, run_config="hw")
    assert e.value.exit_code == 6 and "\n" not in str(e.value)
    assert lava_run.session_members(e.value.cleanup["session"]) == []
    with pytest.raises(LavaRunError, match="the Loihi 2 run did not finish within 0.5 s") as e:
        lava_run.run_lava(graph, parity_pixels()[:1], timeout=0.5, run_config="hw")
    assert lava_run.session_members(e.value.cleanup["session"]) == []
    with pytest.raises(ValueError, match="unknown run configuration"):
        lava_run.run_lava(graph, parity_pixels()[:1], timeout=1, run_config="gpu")


@pytest.mark.parametrize("name,needle", [("lava-sim", "Lava's CPU simulator"), ("onnx", "onnxruntime")])
def test_targets_without_hardware_share_one_dispatch(name, needle):
    target = get_target(name)
    assert type(target).dispatch_status is HwTarget.dispatch_status
    ok, note = target.dispatch_status()
    assert not ok and needle in note
    with pytest.raises(NoHardwareError) as e:
        run_on_hardware(target, "out")
    assert str(e.value) == note and e.value.exit_code == 7
