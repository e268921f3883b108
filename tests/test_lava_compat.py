"""deploy.lava_compat: lava-nc 0.10.0 imports and runs on Python 3.11 / numpy 2.x.

Lava runs happen in a child process with a timeout: a broken Lava hangs instead of raising.
"""

import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.lava


def run_py(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the import failure is specific to Python >= 3.11")
def test_plain_import_fails_without_the_shim():
    """The premise: without our loader, Python 3.11 rejects lava's mutable dataclass default."""
    r = run_py("import lava.proc.lif.process")
    assert r.returncode != 0
    assert "mutable default" in r.stderr and "ByteEncoder" in r.stderr


def test_two_layer_network_runs_fixed_point():
    """RingBuffer -> Dense(20) -> LIF0(vth 10) -> Dense(7) -> LIF1 on Loihi2SimCfg('fixed_pt').

    Hand-computed trace (spec loihi2-fixed-point.md section 3): input spikes at steps 1 and 4;
    LIF0 gets u = 20<<6 = 1280 > vth<<6 = 640 one step later and spikes at steps 2 and 5.
    LIF1 gets u = 7<<6 = 448 at steps 3 and 6; with dv = 0 its v holds 448 (not > 640) until
    step 6, where 448 + 448 = 896 > 640: it spikes and resets to 0.
    """
    r = run_py(
        """
        import json
        import numpy as np
        from deploy.lava_compat import lava_ready
        lava_ready()
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import Dense
        from lava.proc.io.sink import RingBuffer as Sink
        from lava.proc.io.source import RingBuffer as Source
        from lava.proc.lif.process import LIF
        from lava.proc.monitor.process import Monitor

        T = 8
        data = np.zeros((1, T), dtype=np.int32)
        data[0, 0] = data[0, 3] = 1
        src = Source(data=data)
        d0, d1 = Dense(weights=np.array([[20]])), Dense(weights=np.array([[7]]))
        l0 = LIF(shape=(1,), du=4095, dv=0, vth=10)
        l1 = LIF(shape=(1,), du=4095, dv=0, vth=10)
        src.s_out.connect(d0.s_in); d0.a_out.connect(l0.a_in)
        l0.s_out.connect(d1.s_in); d1.a_out.connect(l1.a_in)
        s0, s1 = Sink(shape=(1,), buffer=T), Sink(shape=(1,), buffer=T)
        l0.s_out.connect(s0.a_in); l1.s_out.connect(s1.a_in)
        mv = Monitor(); mv.probe(l1.v, T)
        l0.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        out = dict(s0=s0.data.get()[0].tolist(), s1=s1.data.get()[0].tolist(),
                   v1=mv.get_data()[l1.name]["v"][:, 0].tolist())
        l0.stop()
        print(json.dumps(out))
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["s0"] == [0, 1, 0, 0, 1, 0, 0, 0]
    assert out["s1"] == [0, 0, 0, 0, 0, 1, 0, 0]
    # Monitors read v after the reset: 448 from step 3, 0 after the spike at step 6.
    assert out["v1"] == [0, 0, 448, 448, 448, 0, 0, 0]


def test_reshaped_connection_runs_on_numpy_2():
    """A flatten/reshape virtual-port connection delivers data (it hangs unpatched on numpy >= 2.4)."""
    r = run_py(
        """
        import json
        import numpy as np, scipy.sparse as sp
        from deploy.lava_compat import lava_ready
        lava_ready()
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.io.sink import RingBuffer as Sink
        from lava.proc.io.source import RingBuffer as Source
        from lava.proc.lif.process import LIF
        from lava.proc.sparse.process import Sparse

        T = 4
        data = np.zeros((2, 3, T), dtype=np.int32)
        data[1, 2, 0] = 1
        src = Source(data=data)
        syn = Sparse(weights=sp.csr_matrix(sp.eye(6, dtype=np.int32)))
        relay = LIF(shape=(2, 3), du=4095, dv=4095, vth=0)
        src.s_out.flatten().connect(syn.s_in)
        syn.a_out.reshape((2, 3)).connect(relay.a_in)
        sink = Sink(shape=(2, 3), buffer=T)
        relay.s_out.connect(sink.a_in)
        relay.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        got = sink.data.get()
        relay.stop()
        print(json.dumps(got.tolist()))
        """
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    expected = [[[0] * 4 for _ in range(3)] for _ in range(2)]
    expected[1][2][1] = 1  # one synapse hop: the spike sent at step 1 is relayed at step 2
    assert got == expected


def test_site_packages_untouched():
    """The shim compiles var_model in memory: the installed source still has the 3.10-only code."""
    import importlib.util

    from deploy.lava_compat import lava_ready

    lava_ready()
    spec = importlib.util.find_spec("lava.magma.compiler.var_model")
    source = pathlib.Path(spec.origin).read_text()
    assert "unsafe_hash" not in source
    from lava.magma.compiler import var_model

    hash(var_model.ByteEncoder())  # hashable only through our loader
    assert var_model.CoreEncoder().x == var_model.ByteEncoder()
