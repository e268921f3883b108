"""The NIR front end: foreign producers' graphs (snnTorch, Norse, a residual network), their simulation
against the producers' own, their export with the Lava parity certificate, the refusals, and our own
``model.nir`` round-tripping to the checkpoint path's integer graph."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch

import nir_producers as P
from conftest import DIGITS_MODEL, REPO
from deploy.cli import export_main

EXE = Path(sys.executable).parent / "xoresnet-export"
STEPS = 8


@pytest.fixture(scope="module")
def images():
    pixels, _ = P.digits_images(3)
    return pixels.to(torch.float64) / 16  # the digits' input scale: the network input is pixels / 16


@pytest.fixture(scope="module")
def producers(tmp_path_factory):
    """The three foreign networks, exported by their libraries: ``{key: (module, path, export flags)}``."""
    folder = tmp_path_factory.mktemp("producers")
    conv, res, lif = P.snntorch_conv_net(), P.SnnTorchResidual(), P.norse_net()
    P.export_snntorch(conv, folder / "snntorch-conv.nir")
    P.export_snntorch_residual(res, folder / "snntorch-residual.nir")
    P.export_norse(lif, folder / "norse-lif.nir")
    return {
        "snntorch-conv": (conv, folder / "snntorch-conv.nir", ["--dt", str(P.SNNTORCH_DT)]),
        "snntorch-residual": (res, folder / "snntorch-residual.nir", ["--dt", str(P.SNNTORCH_DT)]),
        "norse-lif": (lif, folder / "norse-lif.nir", ["--dt", str(P.NORSE_DT), "--nir-convention", "norse"]),
    }


# ---------------------------------------------------------------------- the producers' own simulation

def test_snntorch_conv_spikes_equal_snntorch(producers, images):
    net, path, _ = producers["snntorch-conv"]
    theirs = P.simulate_snntorch(net, images, STEPS, {net[1]: "1", net[3]: "3", net[6]: "6"})
    ours, imported = P.interpreter_run(path, images, STEPS, P.SNNTORCH_DT)
    assert imported.info["node_types"]["Conv2d"] == 2 and imported.info["node_types"]["LIF"] == 3
    for name, spikes in theirs.items():
        assert spikes.sum() > 0, name  # every layer fires: the comparison is not of silence
        assert torch.equal(ours.outputs[name].float(), spikes), name


def test_snntorch_residual_spikes_equal_snntorch(producers, images):
    net, path, _ = producers["snntorch-residual"]
    graph = nir.read(str(path))
    assert ("lif1", "lif3") in graph.edges and ("conv3", "lif3") in graph.edges  # the additive skip: fan-in 2
    theirs = P.simulate_snntorch(net, images, STEPS, {net.lif1: "lif1", net.lif2: "lif2", net.lif3: "lif3",
                                                      net.lif4: "lif4"})
    ours, _ = P.interpreter_run(path, images, STEPS, P.SNNTORCH_DT)
    for name, spikes in theirs.items():
        assert spikes.sum() > 0, name
        assert torch.equal(ours.outputs[name].float(), spikes), name


def test_norse_spikes_and_membrane_equal_norse(producers, images):
    """Norse's file means its own equations at dt 1e-3 (``--nir-convention norse``): the LIF spikes are
    equal, the LI readout's membrane equal to float64 rounding."""
    net, path, _ = producers["norse-lif"]
    theirs = P.simulate_norse(net, images, STEPS)
    ours, imported = P.interpreter_run(path, images, STEPS, P.NORSE_DT, convention="norse")
    assert imported.info["node_types"]["CubaLIF"] == 1 and imported.info["node_types"]["LI"] == 1
    assert theirs["1"].sum() > 0
    assert torch.equal(ours.outputs["1"], theirs["1"])
    membrane = ours.outputs["3"].reshape(theirs["3"].shape)
    assert theirs["3"].abs().max() > 0.1
    torch.testing.assert_close(membrane, theirs["3"], rtol=1e-12, atol=1e-12)
    # the file read as NIR's own equations would not be Norse's network (the convention matters)
    plain, _ = P.interpreter_run(path, images, STEPS, P.NORSE_DT)
    assert not torch.equal(plain.outputs["1"], theirs["1"])


# ---------------------------------------------------------------------- refusals (exit 4, one line, nothing written)

def _lif(shape, **values) -> nir.LIF:
    """A LIF of ``shape`` with tau 8e-4 (dt / tau = 1/8 at dt 1e-4: on Loihi's decay grid)."""
    p = {"tau": 8e-4, "r": 1.0, "v_leak": 0.0, "v_threshold": 1.0, "v_reset": 0.0, **values}
    return nir.LIF(**{k: np.full(shape, v) for k, v in p.items()})


def _small_graph(mutate=None) -> nir.NIRGraph:
    """Input [1, 8, 8] -> Conv2d -> LIF -> Flatten -> Affine -> LIF -> Output; ``mutate(nodes, edges)``."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 8, 8])}),
             "conv": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(size=(4, 1, 3, 3)).astype(np.float32), stride=1,
                                padding=1, dilation=1, groups=1, bias=np.zeros(4, np.float32)),
             "lif1": _lif((4, 8, 8)),
             "flat": nir.Flatten(start_dim=0, end_dim=-1, input_type={"input": np.array([4, 8, 8])}),
             "fc": nir.Affine(weight=rng.normal(size=(10, 256)).astype(np.float32), bias=np.zeros(10, np.float32)),
             "lif2": _lif((10,)), "output": nir.Output(output_type={"output": np.array([10])})}
    edges = [("input", "conv"), ("conv", "lif1"), ("lif1", "flat"), ("flat", "fc"), ("fc", "lif2"), ("lif2", "output")]
    if mutate:
        mutate(nodes, edges)
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _other_node(nodes, edges):
    shape = (4, 8, 8)
    nodes["lif1"] = nir.CubaLI(tau_syn=np.ones(shape), tau_mem=np.ones(shape), r=np.ones(shape),
                               v_leak=np.zeros(shape))


def _recurrent(nodes, edges):
    nodes["rec"] = nir.Linear(weight=np.eye(10, dtype=np.float32))
    edges += [("lif2", "rec"), ("rec", "lif2")]


def _reset(nodes, edges):
    nodes["lif2"] = _lif((10,), v_reset=0.5)


def _shape(nodes, edges):
    nodes["fc"] = nir.Affine(weight=np.ones((10, 200), np.float32), bias=np.zeros(10, np.float32))


def _decay(nodes, edges):
    nodes["lif1"] = _lif((4, 8, 8), tau=1e-3)


REFUSALS = {
    "other-node-type": (_other_node, r"NIR node lif1 \(CubaLI\): node type not supported \(supported: Input, "),
    "recurrent-edge": (_recurrent, r"NIR node lif2 \(LIF\): recurrent edge rec -> lif2 \(a cycle\)"),
    "reset": (_reset, r"NIR node lif2 \(LIF\): resets to v_reset = 0.5; .*cannot be expressed"),
    "shape": (_shape, r"NIR node fc \(Affine\): weight \[10, 200\] does not fit its input of 256 values"),
    "decay-off-grid": (_decay, r"NIR node lif1: dt/tau = 0.1 is not on Loihi's 12-bit decay grid .* nearest legal "
                               r"values 409/4096 = 0.099853516 and 410/4096 = 0.10009766"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unsupported_graphs_are_refused_in_one_line_and_nothing_is_written(case, tmp_path, capsys):
    mutate, pattern = REFUSALS[case]
    nir.write(str(tmp_path / "graph.nir"), _small_graph(mutate))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        export_main([str(tmp_path / "graph.nir"), "--dataset", "digits", "--dt", "1e-4", "--timesteps", "4",
                     "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 4, err
    errors = [line for line in err.splitlines() if "error:" in line]  # stage lines come before it
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.nir"]  # no folder, no partial folder


def test_the_same_graph_unmutated_imports(tmp_path):
    """The refusals' base graph itself is deployable: each refusal is the mutation's doing."""
    from xoresnet.nir.frontend import ImportOptions
    from xoresnet.nir.inputs import load_nir_model
    from calibration.float_graph import nir_to_float_graph

    nir.write(str(tmp_path / "graph.nir"), _small_graph())
    model = load_nir_model(str(tmp_path / "graph.nir"), ImportOptions(dt=1e-4, timesteps=4), 16)
    assert sorted(nir_to_float_graph(model.graph).populations) == ["lif1", "lif2"]


def test_snap_decays_takes_the_nearest_grid_value_and_records_the_error(tmp_path):
    """The off-grid decay refused above (dt / tau = 0.1), with ``--snap-decays``: 410/4096, error recorded."""
    from calibration.float_graph import nir_to_float_graph
    from xoresnet.nir.frontend import ImportOptions
    from xoresnet.nir.inputs import load_nir_model

    nir.write(str(tmp_path / "graph.nir"), _small_graph(_decay))
    model = load_nir_model(str(tmp_path / "graph.nir"), ImportOptions(dt=1e-4, timesteps=4, snap_decays=True), 16)
    (snapped,) = nir_to_float_graph(model.graph).meta["decay_grid"]["snapped"]
    assert snapped["node"] == "lif1" and snapped["code"] == 410 and snapped["grid"] == 410 / 4096
    assert abs(snapped["value"] - 0.1) < 1e-12 and snapped["error"] == pytest.approx(0.1 - 410 / 4096)


# ---------------------------------------------------------------------- our own model.nir, round trip

def _integer_graph_contents(graph, path: Path) -> dict:
    """Every dataset and attribute of the saved integer graph; of ``meta`` all but ``source`` (where the
    graph came from: a checkpoint or a NIR file)."""
    from calibration.integer_graph import save_integer_graph

    save_integer_graph(graph, path)
    contents = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, o: contents.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
        f.visititems(lambda k, o: contents.update({f"{k}@{a}": v for a, v in o.attrs.items()}))
        attrs = dict(f.attrs)
    meta = json.loads(attrs.pop("meta"))
    meta.pop("source", None)
    contents.update({f"@{a}": v for a, v in attrs.items()}, meta=meta)
    return contents


def test_our_model_nir_reimported_deploys_to_the_checkpoint_paths_integer_graph(tmp_path):
    """``model.nir`` as the export writes it, read back by the NIR front end with no flags (dt, timesteps
    and input scale from its metadata), calibrates to the same integer graph as the checkpoint."""
    from deploy.cli import CheckpointSource, NirSource
    from xoresnet.nir.export import TIME_CONVENTION, write_nir
    from xoresnet.nir.frontend import ImportOptions
    from xoresnet.nir.inputs import load_nir_model
    from deploy.pipeline import calibration_pixels
    from xoresnet.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(DIGITS_MODEL)
    assert ckpt.quant is None  # a QAT checkpoint's fixed scales are not in model.nir (docs/formats.md)
    checkpoint = CheckpointSource(model_from_checkpoint(ckpt).eval(), ckpt)
    write_nir(checkpoint.nir_graph, tmp_path / "model.nir")
    assert nir.read(str(tmp_path / "model.nir")).metadata["time_convention"] == TIME_CONVENTION
    model = load_nir_model(str(tmp_path / "model.nir"), ImportOptions(), 16)
    assert model.imported.info["xoresnet_file"] and model.imported.info["dt_source"].startswith("the file's")
    pixels = calibration_pixels("digits", None, 4)
    a = _integer_graph_contents(checkpoint.calibrate(pixels).graph, tmp_path / "a.h5")
    b = _integer_graph_contents(NirSource(model).calibrate(pixels).graph, tmp_path / "b.h5")
    assert sorted(a) == sorted(b) and len(a) > 40
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ---------------------------------------------------------------------- export with the parity certificate

def _export(args: list[str], out: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([str(EXE), *args, "--target", "loihi2", "--dataset", "digits", "--eval-samples", "60",
                        "--parity-samples", "2", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verdict: parity passed" in r.stdout, r.stdout[-2000:]
    return r


@pytest.mark.lava
@pytest.mark.parametrize("key, readout", [("snntorch-conv", "spike-count"), ("snntorch-residual", "spike-count"),
                                          ("norse-lif", "membrane")])
def test_foreign_networks_export_with_parity_passed(producers, key, readout, tmp_path):
    _, path, flags = producers[key]
    out = tmp_path / key
    _export([str(path), *flags, "--timesteps", str(STEPS)], out)
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    dt = float(flags[1])
    assert manifest["nir_input"]["dt"] == dt and manifest["nir_input"]["dt_source"] == "--dt"
    assert manifest["nir_input"]["convention"] == ("norse" if key == "norse-lif" else "nir")
    assert report["readout"]["rule"] == readout and report["nir_input"]["readout_rule"] == readout
    assert report["parity"]["readout_equal"] is True
    if key == "snntorch-residual":  # the skip lif1 -> lif3 is delay-balanced like ours
        from calibration.integer_graph import load_integer_graph

        delays = load_integer_graph(out / "integer_graph.h5").delays()
        assert [(d["src"], d["dst"], d["delay"]) for d in delays] == [("lif1", "lif3", 1)]


@pytest.mark.lava
def test_demo_nir_command_of_the_makefile_deploys_the_bundled_model(tmp_path):
    """``make demo-nir`` (README): the bundled snnTorch digits model, with the Makefile's own flags (fewer
    images here), exports with parity passed and the accuracy it was trained to."""
    recipe = (REPO / "Makefile").read_text().split("\ndemo-nir:", 1)[1].split("\n\n", 1)[0]
    argv = shlex.split(recipe.split("xoresnet-export", 1)[1].replace("\\\n", " "))
    argv[argv.index("--out") + 1] = str(tmp_path / "demo-nir")
    r = _export(argv, tmp_path / "demo-nir")
    accuracy = float(re.search(r"Loihi integer ([0-9.]+)%", r.stdout).group(1))
    assert accuracy > 85, r.stdout


def test_snntorch_reads_our_snntorch_dialect_and_reproduces_our_model(tmp_path):
    """``--nir-dialect snntorch``: snnTorch's own reader (``import_from_nir``) runs our digits model with the
    logits of our NIR interpreter on the standard file (float32 rounding apart)."""
    from snntorch import utils
    from snntorch.import_nir import import_from_nir

    from xoresnet.nir.dialects import dialect_graph
    from xoresnet.nir.export import export_nir, write_nir
    from xoresnet.nir.interpreter import NIRInterpreter
    from xoresnet.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(DIGITS_MODEL)
    graph = export_nir(model_from_checkpoint(ckpt).eval())
    write_nir(dialect_graph(graph, "snntorch"), tmp_path / "model.nir")
    dialect = nir.read(str(tmp_path / "model.nir"))
    assert not {"Threshold", "Scale", "SumPool2d"} & {type(n).__name__ for n in dialect.nodes.values()}
    pixels, _ = P.digits_images(1)
    T = ckpt.config.timesteps
    ours = NIRInterpreter(graph, dtype=torch.float64).run(pixels.to(torch.float64) / 16, T).outputs["output"]
    net = import_from_nir(dialect)
    utils.reset(net)
    with torch.no_grad():  # snnTorch's reader runs unbatched samples (its Flatten starts at dimension 0)
        theirs = torch.stack([net(pixels[0].float() / 16)[0] for _ in range(T)])
    assert ours.abs().max() > 1
    torch.testing.assert_close(theirs.double(), ours.reshape(theirs.shape), rtol=0, atol=1e-5)
