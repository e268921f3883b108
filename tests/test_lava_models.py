"""Our Lava process models (deploy/lava_models) compute exactly what Intel's compute.

Two levels: the numpy kernels against Intel's own numerics on many random cases (in this process,
fast), and the process models inside Lava, side by side with Intel's on the same inputs, every
step (a child process: ``tests/lava_side_by_side.py``). Intel's Conv model is slow and breaks at
128 channels or pixels on numpy 2, so it runs only on small shapes; the wide cases are checked
against Intel's convolution code called with Python integers.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from conftest import REPO, run_in_own_session
from deploy import lava_run
from deploy.lava_compat import lava_ready
from deploy.lava_graph import MODEL_SETS, REPLAY_SPIKES_KEY, XORESNET_MODELS
from deploy.lava_models.arith import ExactConv, conv_exact

pytestmark = pytest.mark.lava

INTEL = MODEL_SETS["lava"]
OURS = MODEL_SETS["xoresnet"]
SIDE_BY_SIDE = REPO / "tests" / "lava_side_by_side.py"


def run_side_by_side(tmp_path, cases: list[dict], arrays: dict[str, np.ndarray], timeout: float = 600) -> dict:
    """Run ``cases`` in ``tests/lava_side_by_side.py`` (a child in its own session); its outputs."""
    spec, out = tmp_path / "spec.npz", tmp_path / "out.npz"
    np.savez(spec, spec=np.array(json.dumps(cases)), **arrays)
    run_in_own_session([sys.executable, str(SIDE_BY_SIDE), str(spec), str(out)], timeout,
                       env={**os.environ, "PYTHONPATH": str(REPO), **lava_run.CHILD_THREADS})
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def intel_conv(x, w, stride, padding, dilation, groups, binary: bool) -> np.ndarray:
    """Intel's fixed-point Conv arithmetic (``lava.proc.conv.utils``), geometry as Python integers."""
    lava_ready()
    from lava.proc.conv import utils

    k = tuple(int(n) for n in w.shape[1:3])
    y = utils.conv(x.astype(bool) if binary else x, w, k, tuple(stride), tuple(padding), tuple(dilation), int(groups))
    return utils.signed_clamp(y, 24)


def random_conv(rng, *, wrap: bool = False) -> dict:
    """A random small conv layer: groups, asymmetric kernel/stride/padding/dilation, mixed-sign odd weights."""
    groups = int(rng.choice([1, 1, 2, 3]))
    cg, kg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kx, ky = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride = [int(rng.integers(1, 4)), int(rng.integers(1, 3))]
    padding = [int(rng.integers(0, 3)), int(rng.integers(0, 2))]
    dilation = [int(rng.integers(1, 3)), int(rng.integers(1, 3))]
    X = int(rng.integers(max(1, dilation[0] * (kx - 1) + 1 - 2 * padding[0]), 10))
    Y = int(rng.integers(max(1, dilation[1] * (ky - 1) + 1 - 2 * padding[1]), 10))
    top = 4096 if wrap else 256
    w = rng.integers(-top, top, (kg * groups, kx, ky, cg)).astype(np.int32)
    return dict(weight=w, input_shape=(X, Y, cg * groups), stride=stride, padding=padding, dilation=dilation,
                groups=groups)


# ---------------------------------------------------------------------- kernels (no Lava runtime)

def test_exact_conv_equals_intels_arithmetic_on_random_layers():
    rng = np.random.default_rng(0)
    dtypes = set()
    for trial in range(250):
        layer = random_conv(rng, wrap=trial % 10 == 0)
        binary = bool(trial % 2)
        X, Y, C = layer["input_shape"]
        x = rng.integers(-2, 3, (X, Y, C)) if binary else rng.integers(-4096, 4096, (X, Y, C))
        x = x.astype(np.int32)
        conv = ExactConv(layer["weight"], layer["stride"], layer["padding"], layer["dilation"], layer["groups"])
        got = conv(x, binary=binary)
        dtypes.add(conv.compute_dtype(1 if binary else int(np.abs(x).max())).name)
        want = intel_conv(x, layer["weight"], layer["stride"], layer["padding"], layer["dilation"], layer["groups"],
                          binary)
        assert got.dtype == np.int32 and got.shape == want.shape and np.array_equal(got, want), trial
    assert {"float32", "float64"} <= dtypes  # both exact-float paths ran


def test_exact_conv_int64_path_is_exact_modulo_2_24():
    """Beyond 2^53 (where float64 and Intel's own sums round) the int64 path keeps the exact
    result modulo 2^24, which is all the 24-bit output register holds."""
    rng = np.random.default_rng(1)
    w = rng.integers(-(2 ** 30), 2 ** 30, (2, 3, 3, 4)).astype(np.int64)
    x = rng.integers(-(2 ** 30), 2 ** 30, (5, 4, 4)).astype(np.int64)
    conv = ExactConv(w, (1, 1), (1, 1), (1, 1), 1)
    assert conv.compute_dtype(int(np.abs(x).max())) == np.int64
    got = conv(x, binary=False)
    pad = np.pad(x, ((1, 1), (1, 1), (0, 0))).astype(object)
    for k in range(2):
        for i in range(5):
            for j in range(4):
                exact = int((pad[i:i + 3, j:j + 3, :] * w[k, ::-1, ::-1, :].astype(object)).sum())
                assert got[i, j, k] == ((exact + 2 ** 23) % 2 ** 24) - 2 ** 23


def test_intels_conv_arithmetic_overflows_with_its_int8_geometry_at_128():
    """Why we replace Intel's Conv model: its Vars are int8 (``lava/proc/conv/models.py``), and on
    numpy 2 ``in_channels % groups`` and ``input + 2 * padding`` overflow at 128."""
    lava_ready()
    from lava.proc.conv import utils

    i8 = lambda *v: np.array(v, dtype=np.int8)  # noqa: E731 - the model's Var types
    w = np.ones((2, 3, 3, 128), np.int32)
    with pytest.raises(OverflowError, match="128 out of bounds for int8"):
        utils.conv(np.ones((4, 4, 128), bool), w, i8(3, 3), i8(1, 1), i8(1, 1), i8(1, 1), i8(1)[0])
    with pytest.raises(OverflowError, match="out of bounds for int8"):
        utils.conv(np.ones((128, 4, 2), bool), w[..., :2], i8(3, 3), i8(1, 1), i8(1, 1), i8(1, 1), i8(1)[0])
    assert conv_exact(np.ones((4, 4, 128), np.int32), w, (1, 1), (1, 1), binary=True)[1, 1, 0] == 9 * 128


def test_lif_dynamics_equal_intels_on_random_states():
    """Our LIF arithmetic against Intel's ``subthr_dynamics`` (called on a model instance), with
    states near the 24-bit limits, inputs that wrap int32 after the shift, every decay extreme.
    (In a child: importing Lava's process models sets multiprocessing's start method.)"""
    out = run_in_own_session([sys.executable, str(SIDE_BY_SIDE), "--lif-states", "300"], 300,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.strip().splitlines()[-1] == "300 random LIF states: equal"


# ---------------------------------------------------------------------- process models in Lava

def test_models_equal_intels_step_by_step_in_lava(tmp_path):
    """Every model of ours beside the Intel model it replaces, in one Lava run, every step: random
    conv layers (strides, padding, dilation, groups, mixed-sign odd weights, weight_exp and
    num_weight_bits set (both models ignore them), binary and graded input, a 24-bit wrap), Sparse
    and DelaySparse (clipping, truncation, weight_exp, binary and graded input, delays), LIFReset
    (every decay extreme, negative bias exponents, resets, inputs that wrap) with u and v read
    after every step, and both Extractors."""
    rng = np.random.default_rng(3)
    S = 6
    cases, arrays = [], {}

    def add(kind, intel_key, params, inputs, arr=None):
        i = len(cases)
        arrays[f"in{i}"] = inputs
        names = {}
        for k, v in (arr or {}).items():
            arrays[f"a{i}_{k}"] = v
            names[k] = f"a{i}_{k}"
        cases.append({"kind": kind, "models": [INTEL[intel_key], OURS[intel_key]], "steps": S, "input": f"in{i}",
                      "params": params, "arrays": names})

    convs = []
    while len(convs) < 10:
        j = len(convs)
        layer = random_conv(rng, wrap=j == 9)
        graded = j % 2 == 0 or j == 9
        X, Y, C = layer["input_shape"]
        x = (rng.integers(-4096, 4096, (X, Y, C, S)) if graded else rng.integers(-2, 3, (X, Y, C, S))).astype(np.int32)
        if not intel_conv(x[..., 0], layer["weight"], layer["stride"], layer["padding"], layer["dilation"],
                          layer["groups"], not graded).any():
            continue  # a receptive field of padding only: nothing to compare
        params = dict(input_shape=list(layer["input_shape"]), stride=layer["stride"], padding=layer["padding"],
                      dilation=layer["dilation"], groups=layer["groups"], num_message_bits=8 if graded else 0,
                      weight_exp=int(rng.choice([-3, 0, 2])), num_weight_bits=int(rng.choice([6, 8])))
        add("conv", "Conv", params, x, {"weight": layer["weight"]})
        convs.append((layer, x, graded))
    for j, kind in enumerate(["sparse", "sparse", "sparse", "delay_sparse", "delay_sparse", "delay_sparse"]):
        n_out, n_in = 12, 20
        mask = rng.random((n_out, n_in)) < 0.4
        sign = ["mixed", "excitatory", "inhibitory"][j % 3]
        lo, hi = {"mixed": (-300, 300), "excitatory": (0, 300), "inhibitory": (-300, 1)}[sign]
        w = (rng.integers(lo, hi, (n_out, n_in)) * mask).astype(np.int32)
        graded = j % 2 == 1
        x = (rng.integers(0, 256, (n_in, S)) if graded else rng.integers(-1, 3, (n_in, S))).astype(np.int32)
        params = dict(num_message_bits=8 if graded else 0, weight_exp=int(rng.choice([-2, 0, 1])),
                      num_weight_bits=int(rng.choice([6, 8])))
        arr = {"weights": w}
        if kind == "delay_sparse":
            arr["delays"] = (rng.integers(1, 4, (n_out, n_in)) * mask).astype(np.int64)
            arr["delays"][mask & (rng.random((n_out, n_in)) < 0.3)] = 0
        add(kind, "DelaySparse" if kind == "delay_sparse" else "Sparse", params, x, arr)
    for du, dv in [(4095, 4095), (0, 0), (1023, 2048), (4094, 1)]:
        n = 40
        a = rng.integers(-(2 ** 26), 2 ** 26, (n, S)) if du == 0 else rng.integers(-4000, 4000, (n, S))
        add("lif", "LIFReset", dict(shape=[n], du=du, dv=dv, vth=int(rng.integers(1, 3000)), reset_interval=3,
                                    reset_offset=1), a.astype(np.int32),
            {"bias_mant": rng.integers(-4096, 4096, n).astype(np.int32),
             "bias_exp": rng.integers(-2, 7, n).astype(np.int32)})
    add("extractor", "Extractor", dict(shape=[30]), rng.integers(-2, 3, (30, S)).astype(np.int32))
    add("extractor", "Extractor:readout", dict(shape=[10]), rng.integers(-(2 ** 30), 2 ** 30, (10, S)).astype(np.int32))

    got = run_side_by_side(tmp_path, cases, arrays)
    for i, case in enumerate(cases):
        intel, ours = got[f"{i}_0"], got[f"{i}_1"]
        if case["models"][1].endswith("Spikes"):  # bool spikes vs Intel's float 0/1
            intel, ours = intel != 0, ours != 0
        assert intel.shape == ours.shape and np.array_equal(intel, ours), (i, case["kind"])
        if case["kind"] == "lif":
            for var in ("u", "v"):
                assert np.array_equal(got[f"{i}_0_{var}"], got[f"{i}_1_{var}"]), (i, var)
        assert np.any(intel != 0), (i, case["kind"])  # a comparison of zeros proves nothing
    # and both equal Intel's arithmetic: step t sends the output computed from input t - 1
    for i, (layer, x, graded) in enumerate(convs):
        for t in range(1, S):
            want = intel_conv(x[..., t - 1], layer["weight"], layer["stride"], layer["padding"], layer["dilation"],
                              layer["groups"], not graded)
            assert np.array_equal(got[f"{i}_1"][t], want), (i, t)
    assert np.abs(got["9_1"]).max() > 2 ** 20  # the wrapped layer reaches the top of the 24-bit range


def test_conv_model_at_128_pixels_and_128_to_512_channels(tmp_path):
    """Our Conv model in Lava where Intel's raises: a 128x128 input and 128/256/512 channels,
    against Intel's convolution arithmetic (Python-integer geometry)."""
    rng = np.random.default_rng(4)
    S = 3
    cases, arrays, expected = [], {}, []
    layers = [(128, 128, 2, 3, True), (4, 4, 128, 128, False), (4, 4, 256, 256, False), (4, 4, 512, 512, False)]
    for i, (X, Y, c_in, c_out, graded) in enumerate(layers):
        w = rng.integers(-128, 128, (c_out, 3, 3, c_in)).astype(np.int32)
        x = np.zeros((X, Y, c_in, S), np.int32)
        x[..., 0] = rng.integers(0, 256, (X, Y, c_in)) if graded else rng.random((X, Y, c_in)) < 0.2
        arrays[f"in{i}"], arrays[f"w{i}"] = x, w
        cases.append({"kind": "conv", "models": [OURS["Conv"]], "steps": S, "input": f"in{i}",
                      "params": dict(input_shape=[X, Y, c_in], padding=1, num_message_bits=8 if graded else 0),
                      "arrays": {"weight": f"w{i}"}})
        expected.append(intel_conv(x[..., 0], w, (1, 1), (1, 1), (1, 1), 1, not graded))
    got = run_side_by_side(tmp_path, cases, arrays)
    for i, want in enumerate(expected):
        out = got[f"{i}_0"]
        assert out.shape == (S,) + want.shape
        assert np.all(out[0] == 0) and np.array_equal(out[1], want) and np.all(out[2] == 0), i
        assert np.any(want != 0)


def test_every_model_of_ours_is_listed_and_loads():
    """The xoresnet model set differs from Intel's exactly by our models (but the replay of a
    slice's inputs, test harness rather than network, which is ours in both), each a ProcessModel
    of the process class it is listed for (imported in a child, as the Lava worker does)."""
    assert INTEL[REPLAY_SPIKES_KEY] == OURS[REPLAY_SPIKES_KEY] == XORESNET_MODELS[REPLAY_SPIKES_KEY]
    assert {k: v for k, v in OURS.items() if INTEL[k] != v} == {k: v for k, v in XORESNET_MODELS.items()
                                                              if k != REPLAY_SPIKES_KEY}
    code = ("import json; from deploy.lava_graph import process_models; print(json.dumps({k: [m.implements_process "
            "is p, p.__name__, m.__module__] for k, (p, m) in process_models('xoresnet').items()}))")
    loaded = json.loads(run_in_own_session([sys.executable, "-c", code], 300).strip().splitlines()[-1])
    assert set(loaded) == set(OURS)
    for key, (implements, proc_name, module) in loaded.items():
        assert implements and proc_name == key.split(":")[0], key
        assert module.startswith("deploy.lava_models." if key in XORESNET_MODELS else "lava.proc."), key
