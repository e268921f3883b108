"""The float CUBA LIF: hand-computed traces, the strict threshold, resets, and the hand-written backward."""

import math

import pytest
import torch

from xoresnet.decay_grid import decay_codes, nearest_decay_code, on_decay_grid
from xoresnet.neuron import CubaLIF, Current, NeuronSpec, SpikeFn, atan_surrogate, cuba_lif_sequence, snap_to_decay_grid


def run(x, du=1.0, dv=0.5, vth=1.0, bias=None, soft=False):
    x = torch.tensor(x, dtype=torch.float64).view(-1, 1, 1)  # [T, B=1, N=1]
    b = None if bias is None else torch.tensor([bias], dtype=torch.float64)
    s, h = cuba_lif_sequence(x, b, torch.tensor(du, dtype=torch.float64), torch.tensor(dv, dtype=torch.float64), vth,
                             soft_reset=soft)
    return s.flatten().tolist(), h.flatten().tolist()


def test_current_free_leaky_trace():
    # v: 0.6 -> 0.3+0.6=0.9 -> 0.45+0.6=1.05 (spike, v=0) -> 0 -> 2.0 (spike)
    s, h = run([0.6, 0.6, 0.6, 0.0, 2.0], du=1.0, dv=0.5)
    assert s == [0, 0, 1, 0, 1]
    assert h == pytest.approx([0.6, 0.9, 1.05, 0.0, 2.0])


def test_threshold_is_strict_and_current_decays():
    # du = 0.5: u = 1, 0.5, 0.25; dv = 0: h = 1.0 (== vth: no spike), 1.5 (spike, reset), 0.25
    s, h = run([1.0, 0.0, 0.0], du=0.5, dv=0.0)
    assert s == [0, 1, 0]
    assert h == pytest.approx([1.0, 1.5, 0.25])


def test_bias_enters_v_every_step():
    s, h = run([0.0] * 5, du=1.0, dv=0.0, bias=0.3)
    assert s == [0, 0, 0, 1, 0]
    assert h == pytest.approx([0.3, 0.6, 0.9, 1.2, 0.3])


def test_soft_reset_subtracts_threshold():
    s, h = run([1.5, 0.0, 0.0], du=1.0, dv=0.0, soft=True)
    assert s == [1, 0, 0]
    assert h == pytest.approx([1.5, 0.5, 0.5])


def reference_autograd(x, bias, du, dv, vth, alpha, soft):
    """Per-step autograd version of the same neuron (detached reset), for the gradient check."""
    u = torch.zeros_like(x[0])
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        u = u * (1 - du) + x[t]
        h = v * (1 - dv) + u + bias
        s = SpikeFn.apply(h - vth, alpha)
        v = h - vth * s.detach() if soft else h * (1 - s.detach())
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("du,soft", [(1.0, False), (0.25, False), (0.25, True)])
def test_backward_matches_autograd(du, soft):
    torch.manual_seed(0)
    T, B, C, H, W = 6, 3, 4, 5, 5
    x0 = torch.randn(T, B, C, H, W, dtype=torch.float64) * 0.8
    b0 = torch.randn(C, dtype=torch.float64) * 0.2
    g = torch.randn(T, B, C, H, W, dtype=torch.float64)
    grads = []
    for impl in ("fast", "ref"):
        x = x0.clone().requires_grad_()
        b = b0.clone().requires_grad_()
        du_t = torch.tensor(du, dtype=torch.float64, requires_grad=True)
        dv_t = torch.tensor(0.375, dtype=torch.float64, requires_grad=True)
        if impl == "fast":
            s, _ = cuba_lif_sequence(x, b, du_t, dv_t, 1.0, alpha=2.0, soft_reset=soft)
        else:
            s = reference_autograd(x, b.view(C, 1, 1), du_t, dv_t, 1.0, 2.0, soft)
        (s * g).sum().backward()
        grads.append((s.detach(), x.grad, b.grad, du_t.grad, dv_t.grad))
    (s1, *g1), (s2, *g2) = grads
    assert torch.equal(s1, s2)
    names = ("x", "bias", "du", "dv")
    for name, a, b in zip(names, g1, g2):
        if name == "du" and du == 1.0:
            assert float(a) == 0.0  # du = 1 is current-free: no current state, no du gradient
            continue
        torch.testing.assert_close(a, b, msg=lambda m: f"grad {name}: {m}")


def test_surrogate_shape():
    assert atan_surrogate(torch.tensor(0.0), 2.0) == pytest.approx(1.0)
    assert atan_surrogate(torch.tensor(1.0), 2.0) == pytest.approx(1.0 / (1 + math.pi**2))


def test_decay_grid():
    assert decay_codes(1.0, 0.0) == (4095, 0) and decay_codes(0.5, 0.25) == (2047, 1024)
    assert nearest_decay_code(0.3, offset=0) == (1229, abs(0.3 - 1229 / 4096))
    assert nearest_decay_code(2.0, offset=1) == (4095, 1.0)  # clamped to the 12-bit register
    assert on_decay_grid(1.0, offset=1) and on_decay_grid(1 / 4096, offset=1)
    assert not on_decay_grid(0.0, offset=1)  # du_L would be -1
    assert on_decay_grid(0.0, offset=0) and on_decay_grid(0.5, offset=0)
    assert not on_decay_grid(1.0, offset=0)  # dv_L = 4096 does not fit 12 bits
    assert not on_decay_grid(0.3, offset=0)
    x = torch.tensor(0.30001, requires_grad=True)
    y = snap_to_decay_grid(x, offset=0)
    assert float(y.detach()) * 4096 == round(float(y.detach()) * 4096)
    y.backward()
    assert float(x.grad) == 1.0


def test_module_shell_uses_current_bias_and_learned_decay():
    torch.manual_seed(1)
    lif = CubaLIF(NeuronSpec(du=1.0, dv=0.5, learn_decay=True))
    x = torch.rand(4, 2, 3, 2, 2)
    bias = torch.tensor([0.0, 5.0, -5.0])
    s = lif(Current(x, bias))
    assert s.shape == x.shape
    assert bool((s[:, :, 1] == 1).all()) and bool((s[:, :, 2] == 0).all())
    s.sum().backward()
    assert lif.dv.grad is not None
