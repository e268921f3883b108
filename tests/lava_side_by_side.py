"""Run Lava process models side by side on the same inputs, step by step (a child of
``tests/test_lava_models.py``: ``python tests/lava_side_by_side.py SPEC.npz OUT.npz``; and
``--lif-states N``: :func:`check_lif_states`). Lava's process models are imported only in such
a child: importing them sets ``multiprocessing``'s start method, which a test process may have set.

``SPEC.npz`` holds ``spec`` (JSON: a list of cases) and the arrays the cases name. A case is
``{"kind", "models": [dotted model paths], "steps": S, "input": array name, "params": {...},
"arrays": {param: array name}}``: one ``io.source.RingBuffer`` sends the input array's column
``t - 1`` at step ``t``; one process of ``kind`` per model reads it; Intel's own Extractor records
each one's output every step. (Lava runs the processes connected to the one it is asked to run:
every source also feeds a zero-weight ``Dense`` into one shared hub, which joins the cases.) ``OUT.npz`` gets ``<case>_<model>`` arrays ``[S, *shape]``, and for
``lif`` also ``<case>_<model>_u`` / ``_v`` (read after every step). Only definitions run at import.
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np


def _model(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _process(kind: str, params: dict, arrays: dict):
    import scipy.sparse as sp
    from lava.proc.conv.process import Conv
    from lava.proc.io.extractor import Extractor
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import DelaySparse, Sparse

    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}  # JSON lists -> Lava tuples
    if kind == "conv":
        return Conv(weight=arrays["weight"], **params), "a_out"
    if kind == "sparse":
        return Sparse(weights=sp.csr_matrix(arrays["weights"]), **params), "a_out"
    if kind == "delay_sparse":
        return DelaySparse(weights=sp.csr_matrix(arrays["weights"]), delays=sp.csr_matrix(arrays["delays"]),
                           **params), "a_out"
    if kind == "lif":
        return LIFReset(bias_mant=arrays["bias_mant"], bias_exp=arrays["bias_exp"], **params), "s_out"
    if kind == "extractor":
        return Extractor(**params), None
    raise ValueError(f"unknown kind {kind!r}")


def main(spec_path: str, out_path: str) -> None:
    from deploy.lava_compat import lava_ready

    lava_ready()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.dense.models import PyDenseModelBitAcc
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import PySendModelFixed, RingBuffer

    z = np.load(spec_path)
    cases = json.loads(str(z["spec"]))
    pinned, probes, lifs = {}, {}, {}
    steps = max(c["steps"] for c in cases)
    hub = root = Extractor(shape=(1,), buffer_size=steps)
    for i, case in enumerate(cases):
        data = z[case["input"]]
        src = RingBuffer(data=np.concatenate([data, np.zeros(data.shape[:-1] + (steps - data.shape[-1],),
                                                             data.dtype)], -1))
        pinned[src] = PySendModelFixed
        link = Dense(weights=np.zeros((1, int(np.prod(data.shape[:-1]))), np.int32))
        pinned[link] = PyDenseModelBitAcc
        (src.s_out.flatten() if data.ndim > 2 else src.s_out).connect(link.s_in)
        link.a_out.connect(hub.in_port)
        arrays = {k: z[v] for k, v in case.get("arrays", {}).items()}
        for j, path in enumerate(case["models"]):
            proc, out = _process(case["kind"], case["params"], arrays)
            pinned[proc] = _model(path)
            key = f"{i}_{j}"
            if case["kind"] == "extractor":  # the process under test records the source itself
                src.s_out.connect(proc.in_port)
                probes[key] = proc
                continue
            src.s_out.connect(proc.a_in if case["kind"] == "lif" else proc.s_in)
            probe = Extractor(shape=getattr(proc, out).shape, buffer_size=steps)
            pinned[probe] = PyLoihiExtractorModel
            getattr(proc, out).connect(probe.in_port)
            probes[key] = probe
            if case["kind"] == "lif":
                lifs[key] = proc
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={Extractor: PyLoihiExtractorModel, **pinned})
    out: dict[str, np.ndarray] = {}
    try:
        for _ in range(steps):  # one step at a time: the LIF states are read after every step
            root.run(condition=RunSteps(num_steps=1), run_cfg=cfg)
            for key, proc in lifs.items():
                out.setdefault(f"{key}_u", []).append(proc.u.get())
                out.setdefault(f"{key}_v", []).append(proc.v.get())
            for key, probe in probes.items():
                out.setdefault(key, []).append(probe.receive())
            hub.receive()
    finally:
        root.stop()
    np.savez(out_path, **{k: np.stack(v) for k, v in out.items()})


def check_lif_states(trials: int, seed: int = 2) -> None:
    """Our LIF arithmetic (:func:`deploy.lava_models.arith.lif_subthreshold`) against Intel's
    ``subthr_dynamics`` called on a ``PyLifResetModelBitAcc`` instance, on ``trials`` random states:
    ``u``, ``v`` near the 24-bit limits, inputs that wrap int32 after the shift, every decay extreme,
    negative bias exponents. Raises AssertionError on the first difference."""
    from deploy.lava_compat import lava_ready
    from deploy.lava_models.arith import lif_subthreshold

    lava_ready()
    from lava.proc.lif.models import PyLifResetModelBitAcc

    rng = np.random.default_rng(seed)
    n = 64
    for trial in range(trials):
        du, dv = int(rng.choice([0, 1, 99, 2047, 4094, 4095])), int(rng.choice([0, 1, 99, 2048, 4095]))
        m = PyLifResetModelBitAcc({"reset_interval": 4, "reset_offset": 1})
        m.du, m.dv, m.vth = du, dv, int(rng.integers(0, 2 ** 17))
        m.bias_mant = rng.integers(-4096, 4096, n).astype(np.int16)
        m.bias_exp = rng.integers(-3, 8, n).astype(np.int16)
        m.u = rng.integers(-(2 ** 23) + 1, 2 ** 23, n).astype(np.int32)
        m.v = rng.integers(-(2 ** 23) + 1, 2 ** 23, n).astype(np.int32)
        m.scale_bias()
        a = rng.integers(-(2 ** 26), 2 ** 26, n) if trial % 3 == 0 else rng.integers(-3000, 3000, n)
        a = a.astype(np.int32)
        u, v = lif_subthreshold(m.u.copy(), m.v.copy(), a, du=du, dv=dv, bias=m.effective_bias)
        m.subthr_dynamics(a)
        assert np.array_equal(u, m.u) and np.array_equal(v, m.v), (trial, du, dv)
    print(f"{trials} random LIF states: equal")


if __name__ == "__main__":
    if sys.argv[1] == "--lif-states":
        check_lif_states(int(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2])
