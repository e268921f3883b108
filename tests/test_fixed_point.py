"""Loihi 2 fixed-point rules, one hand-computed trace per rule (loihi2-fixed-point.md sections 1.3, 2.1, 2.4).

Every expected number below is worked out by hand in the comments from the spec's algorithm,
never produced by the code under test. Units: ``a`` is the synaptic input (a-units), ``u`` and
``v`` are in v-units (a << 6), ``vth`` is the mantissa (compared as ``vth << 6``).
"""

import pytest
import torch

from calibration.fixed_point import (bias_value, conv_current, dense_current, identity_current, lif_step,
                                     shift_exp, wrap24)

I64 = torch.int64


def t(*values):
    return torch.tensor(values, dtype=I64)


def run(u0, v0, inputs, *, du, dv, vth=131071, bias=0):
    """Run ``lif_step`` on a vector of neurons; returns lists of (u, h, s, v) per step."""
    u = torch.as_tensor(u0, dtype=I64).clone()
    v = torch.as_tensor(v0, dtype=I64).clone()
    b = torch.as_tensor(bias, dtype=I64) * torch.ones_like(u)
    out = []
    for a in inputs:
        u, h, s, v = lif_step(u, v, torch.as_tensor(a, dtype=I64) * torch.ones_like(u), du=du, dv=dv, bias=b,
                              vth=vth)
        out.append((u.tolist(), h.tolist(), s.tolist(), v.tolist()))
    return out


# ---------------------------------------------------------------------- current decay

def test_current_decay_rounds_toward_zero():
    # du = 2048 -> effective decay du + 1 = 2049, keep 4096 - 2049 = 2047.
    # +1000 * 2047 / 4096 = +499.75 -> +499 ; -1000 * 2047 / 4096 = -499.75 -> -499 (floor would be -500).
    # (The spec writes "u0 = +-1000 ... gives -+499"; the decay keeps the sign: +1000 -> +499, -1000 -> -499.)
    [(u, _, _, _)] = run([1000, -1000], [0, 0], [0], du=2048, dv=0)
    assert u == [499, -499]


def test_voltage_decay_rounds_toward_zero_and_adds_u():
    # dv = 100 (no offset): keep 3996. 1000 * 3996 / 4096 = 975.59 -> 975; -1000 -> -975.
    # du = 4095 and a = 0 give u = 0, so h = v.
    [(u, h, s, v)] = run([0, 0], [1000, -1000], [0], du=4095, dv=100)
    assert u == [0, 0] and h == [975, -975] and v == [975, -975] and s == [False, False]
    # with an input a = 2 (u = 128): h = 975 + 128 = 1103 and -975 + 128 = -847
    [(u, h, _, _)] = run([0, 0], [1000, -1000], [2], du=4095, dv=100)
    assert u == [128, 128] and h == [1103, -847]


def test_du_zero_still_decays_by_one_4096th():
    # du = 0 -> effective decay 1: 100000 * 4095 / 4096 = 99975.59 -> 99975 ; 99975 * 4095 / 4096 = 99950.59 -> 99950
    trace = run([100000], [0], [0, 0], du=0, dv=0)
    assert [step[0] for step in trace] == [[99975], [99950]]


def test_du_4095_means_no_current_memory():
    # effective decay 4096: u = a << 6 exactly, whatever u was.
    trace = run([5000, -7000], [0, 0], [3, 0, -2], du=4095, dv=4095)
    assert [step[0] for step in trace] == [[192, 192], [0, 0], [-128, -128]]


def test_du_minus_one_means_no_current_decay():
    # effective decay 0 (what netx emits for iDecay = 0): u accumulates a << 6 exactly.
    trace = run([1000], [0], [1, 1, 1], du=-1, dv=4095)
    assert [step[0] for step in trace] == [[1064], [1128], [1192]]


def test_dv_zero_is_no_leak_and_dv_4096_zeroes_v():
    # dv has no +1 offset: dv = 0 keeps v (IF); dv = 4096 multiplies by 0.
    trace = run([0], [1000], [0, 0, 0], du=4095, dv=0)
    assert [step[3] for step in trace] == [[1000], [1000], [1000]]
    trace = run([0], [1000], [0], du=4095, dv=4096)
    assert trace[0][3] == [0]
    # dv = 1 (the smallest leak): 1000 * 4095 / 4096 = 999.76 -> 999
    assert run([0], [1000], [0], du=4095, dv=1)[0][3] == [999]


def test_v_memory_of_a_memoryless_gate_vanishes_below_4096():
    # dv = 4095 (keep 1): residual v * 1 / 4096 rounds to 0 for |v| < 4096, but not at 4096.
    trace = run([0, 0, 0], [4095, -4095, 4096], [0], du=4095, dv=4095)
    assert trace[0][3] == [0, 0, 1]


# ---------------------------------------------------------------------- wraps and saturation

def test_u_wraps_once_past_plus_2_23():
    # no decay (du = -1), a = 1 adds 64 per step, from u0 = 2^23 - 74 = 8388534:
    # step 1: 8388534 + 64 = 8388598 = 2^23 - 10 (no wrap)
    # step 2: 8388598 + 64 = 8388662 > 2^23 -> 8388662 - 2^24 = -8388554
    trace = run([8388534], [0], [1, 1], du=-1, dv=4095)
    assert [step[0] for step in trace] == [[8388598], [-8388554]]


def test_u_at_exactly_plus_2_23_is_kept_and_minus_2_23_wraps_to_plus():
    # u0 = 2^23 - 64, a = 1: x = 2^23 exactly, not > 2^23: kept as +8388608 (outside 24-bit signed).
    assert run([8388608 - 64], [0], [1], du=-1, dv=4095)[0][0] == [8388608]
    # u0 = -2^23 + 64, a = -1: x = -2^23 <= -2^23 -> + 2^24 = +8388608 (the quirk); v saturates at 2^23 - 1.
    [(u, h, _, _)] = run([-8388608 + 64], [0], [-1], du=-1, dv=4095)
    assert u == [8388608] and h == [8388607]
    # one more below: -2^23 - 64 -> +2^23 - 64 = 8388544
    assert run([-8388608 + 64], [0], [-2], du=-1, dv=4095)[0][0] == [8388544]


def test_u_wrap_is_single_not_modulo():
    # u0 = 0, a = 2^18: x = 2^24 > 2^23 -> 2^24 - 2^24 = 0 ; a = 3 * 2^17: x = 3 * 2^23 -> 3 * 2^23 - 2^24 = 2^23
    # (a modulo wrap would give -2^23 for the second one; Lava subtracts 2^24 once)
    u, _, _, _ = lif_step(t(0, 0), t(0, 0), t(1 << 18, 3 << 17), du=4095, dv=4095, bias=t(0, 0), vth=131071)
    assert u.tolist() == [0, 8388608]


def test_a_shift_by_6_wraps_in_int32():
    # a << 6 is computed in int32: a = 2^26 + 3 -> 2^32 + 192 -> wraps to 192 (as if a = 3).
    # a = 2^25 -> 2^31 -> -2^31; x = -2^31 <= -2^23 -> single wrap: -2^31 + 2^24 = -2130706432.
    u, h, _, _ = lif_step(t(0, 0), t(0, 0), t((1 << 26) + 3, 1 << 25), du=4095, dv=4095, bias=t(0, 0), vth=131071)
    assert u.tolist() == [192, -2130706432]
    assert h.tolist() == [192, -8388607]  # v saturates


def test_v_saturates_at_plus_minus_2_23_minus_1():
    # v0 = +-8388000, dv = 0, a = +-100 (u = +-6400): +-8394400 -> clipped to +-8388607
    u, h, s, v = lif_step(t(0, 0), t(8388000, -8388000), t(100, -100), du=4095, dv=0, bias=t(0, 0), vth=131071)
    assert h.tolist() == [8388607, -8388607]
    # vth = 131071 -> 131071 << 6 = 8388544 < 8388607: the saturated +v still spikes and resets
    assert s.tolist() == [True, False] and v.tolist() == [0, -8388607]


# ---------------------------------------------------------------------- threshold and reset

def test_threshold_is_strict_and_reset_keeps_u():
    # vth = 10 -> effective 640. a = 10 (u = 640): v = 640 is not > 640, no spike.
    [(u, h, s, v)] = run([0], [0], [10], du=4095, dv=4095, vth=10)
    assert (u, h, s, v) == ([640], [640], [False], [640])
    # a = 20 (u = 1280): spikes, v reset to 0, u stays 1280.
    [(u, h, s, v)] = run([0], [0], [20], du=4095, dv=4095, vth=10)
    assert (u, h, s, v) == ([1280], [1280], [True], [0])


def test_reset_keeps_u_and_u_keeps_driving_v():
    # du = 2047 (keep 2048 = half), dv = 0, vth = 10 (640). a = 20 at step 1 only.
    # step 1: u = 1280, h = 1280 > 640 spike, v = 0
    # step 2: u = 1280 / 2 = 640, h = 0 + 640 = 640, no spike (strict), v = 640
    # step 3: u = 320, h = 640 + 320 = 960 > 640 spike, v = 0
    # step 4: u = 160, h = 160
    trace = run([0], [0], [20, 0, 0, 0], du=2047, dv=0, vth=10)
    assert [s[0] for s in trace] == [[1280], [640], [320], [160]]
    assert [s[1] for s in trace] == [[1280], [640], [960], [160]]
    assert [s[2] for s in trace] == [[True], [False], [True], [False]]
    assert [s[3] for s in trace] == [[0], [640], [0], [160]]


# ---------------------------------------------------------------------- bias

def test_bias_value_shifts():
    # mant << exp, or floor(mant / 2^-exp) for negative exponents
    got = bias_value(t(5, -5, 5, -5, 4095, -4096, 3), t(3, -1, -1, 3, 7, 7, 0))
    assert got.tolist() == [40, -3, 2, -40, 4095 * 128, -4096 * 128, 3]


def test_bias_is_added_every_step_from_step_1_unshifted():
    # bias 40 v-units per step (mant 5, exp 3), not 40 << 6; no input, dv = 0: v = 40, 80, 120
    trace = run([0], [0], [0, 0, 0], du=4095, dv=0, bias=int(bias_value(t(5), t(3))))
    assert [s[3] for s in trace] == [[40], [80], [120]]
    # mant -5, exp -1: floor(-2.5) = -3 per step: -3, -6, -9
    trace = run([0], [0], [0, 0, 0], du=4095, dv=0, bias=int(bias_value(t(-5), t(-1))))
    assert [s[3] for s in trace] == [[-3], [-6], [-9]]


def test_bias_spikes_with_strict_threshold():
    # bias 64 per step with vth = 2 (128): v = 64, 128 (not > 128), 192 > 128 spike -> 0, 64, ...
    trace = run([0], [0], [0] * 5, du=4095, dv=0, vth=2, bias=64)
    assert [s[2][0] for s in trace] == [False, False, True, False, False]
    assert [s[3][0] for s in trace] == [64, 128, 0, 64, 128]


# ---------------------------------------------------------------------- synapses

def test_fan_in_sums_before_the_shift():
    # two Dense outputs 5 and 7 into one a_in: u = 12 << 6 = 768
    a = dense_current(t(1).view(1, 1), t(5).view(1, 1), 0) + dense_current(t(1).view(1, 1), t(7).view(1, 1), 0)
    u, _, _, _ = lif_step(t(0), t(0), a.view(1), du=4095, dv=0, bias=t(0), vth=131071)
    assert u.tolist() == [768]


def test_dense_weight_exp_applies_to_the_sum():
    # W = [3, 5], both inputs active, weight_exp -1: floor((3 + 5) / 2) = 4 (per synapse: 1 + 2 = 3)
    assert dense_current(t(1, 1).view(1, 2), t(3, 5).view(1, 2), -1).tolist() == [[4]]
    # sums -4, -2, 2 with weight_exp -2: floor -> -1, -1, 0
    assert dense_current(t(1).view(1, 1), t(-4, -2, 2).view(3, 1), -2).tolist() == [[-1, -1, 0]]
    # positive exponent: (3 + 5) << 2 = 32 ; only the active input counts (x = [0, 1] -> 5 << 2 = 20)
    assert dense_current(t(1, 1).view(1, 2), t(3, 5).view(1, 2), 2).tolist() == [[32]]
    assert dense_current(t(0, 1).view(1, 2), t(3, 5).view(1, 2), 2).tolist() == [[20]]


def test_dense_flattens_sources_in_chw_order():
    # a [1, 2, 1, 2] source flattened (C, H, W) -> [x00, x01, x10, x11]; W picks the third element (c=1, w=0)
    x = t(0, 0, 1, 0).view(1, 2, 1, 2)
    assert dense_current(x, t(0, 0, 7, 0).view(1, 4), 0).tolist() == [[7]]
    assert dense_current(x, t(7, 0, 0, 0).view(1, 4), 0).tolist() == [[0]]


def test_shift_exp_floors():
    assert shift_exp(t(5, -5, 3, -3, 8), 2).tolist() == [20, -20, 12, -12, 32]
    assert shift_exp(t(5, -5, 3, -3, 8), -1).tolist() == [2, -3, 1, -2, 4]


def test_identity_synapse_is_elementwise():
    # element-wise w * x, then the exponent: [3, -4, 5] on x = [1, 0, 1] -> [3, 0, 5]; exp 1 -> [6, 0, 10]
    x = t(1, 0, 1).view(1, 3)
    w = t(3, -4, 5)
    assert identity_current(x, w, 0).tolist() == [[3, 0, 5]]
    assert identity_current(x, w, 1).tolist() == [[6, 0, 10]]
    # exp -1 floors per element: 3 >> 1 = 1, 5 >> 1 = 2, -3 >> 1 = -2
    assert identity_current(t(1, 1, 1).view(1, 3), t(3, 5, -3), -1).tolist() == [[1, 2, -2]]


def test_wrap24_values():
    # signed 24-bit wrap ((x + 2^23) mod 2^24) - 2^23
    got = wrap24(t(8388607, 8388608, -8388608, -8388609, 13107200, 16777216 + 5, 0))
    assert got.tolist() == [8388607, -8388608, -8388608, 8388607, -3670016, 5, 0]


def test_conv_output_wraps_to_24_bits():
    # 2^16 (graded payload) * weight 200 = 13107200 -> 13107200 - 2^24 = -3670016 (Lava Conv, fixed_pt)
    x = torch.full((1, 1, 1, 1), 1 << 16, dtype=I64)
    out = conv_current(x, torch.full((1, 1, 1, 1), 200, dtype=I64), stride=(1, 1), padding=(0, 0), groups=1)
    assert out.flatten().tolist() == [-3670016]


def test_conv_is_cross_correlation_in_pytorch_layout_with_padding_stride_groups():
    # x = [[1, 2], [3, 4]], kernel [[1, 0], [0, 0]] (PyTorch layout, cross-correlation): picks x[0, 0] = 1
    # (a true convolution, Lava's convention on the flipped kernel, would pick x[1, 1] = 4)
    x = t(1, 2, 3, 4).view(1, 1, 2, 2)
    k = t(1, 0, 0, 0).view(1, 1, 2, 2)
    assert conv_current(x, k, stride=(1, 1), padding=(0, 0), groups=1).flatten().tolist() == [1]
    # 3x3 ones kernel, padding 1, stride 2 on a 3x3 input 1..9: output (2x2)
    #   (0,0): 1+2+4+5 = 12 ; (0,1): 2+3+5+6 = 16 ; (1,0): 4+5+7+8 = 24 ; (1,1): 5+6+8+9 = 28
    x = torch.arange(1, 10, dtype=I64).view(1, 1, 3, 3)
    out = conv_current(x, torch.ones(1, 1, 3, 3, dtype=I64), stride=(2, 2), padding=(1, 1), groups=1)
    assert out.view(-1).tolist() == [12, 16, 24, 28]
    # groups = 2: channel 0 times 2, channel 1 times -3, separately
    x = t(5, 7).view(1, 2, 1, 1)
    w = t(2, -3).view(2, 1, 1, 1)
    assert conv_current(x, w, stride=(1, 1), padding=(0, 0), groups=2).view(-1).tolist() == [10, -21]
    # the conv ignores odd-weight truncation: odd mixed weights are kept exactly (3 and -3)
    w = t(3, -3).view(1, 2, 1, 1)
    assert conv_current(t(1, 1).view(1, 2, 1, 1) * t(1, 0).view(1, 2, 1, 1), w, stride=1, padding=0,
                        groups=1).view(-1).tolist() == [3]


@pytest.mark.parametrize("du,dv", [(0, 0), (4095, 4095), (2047, 100)])
def test_lif_step_dtypes_are_int64(du, dv):
    u, h, s, v = lif_step(t(10), t(10), t(1), du=du, dv=dv, bias=t(0), vth=1)
    assert u.dtype == h.dtype == v.dtype == I64 and s.dtype == torch.bool


@pytest.mark.parametrize("keep", [1, 7, 63, 64, 65, 2048, 2049, 4000, 4095])
def test_int32_decay_equals_the_int64_product(keep):
    """The int32 decay splits the product (it would overflow): the same round-toward-zero result on
    every residue class, both signs, both halves of the split of keep and the extremes of the range."""
    from calibration.fixed_point import decay_rtz
    edges = [-(1 << 25), 1 << 25, -(1 << 23), (1 << 23), (1 << 23) - 1, -(1 << 23) + 1]
    x = torch.cat([torch.arange(-5000, 5000), torch.tensor(edges),
                   torch.randint(-(1 << 24), 1 << 24, (100_000,), generator=torch.Generator().manual_seed(keep))])
    wide = decay_rtz(x.to(I64), keep)
    narrow = decay_rtz(x.to(torch.int32), keep)
    assert narrow.dtype == torch.int32 and torch.equal(narrow.to(I64), wide)


@pytest.mark.parametrize("du,dv", [(4095, 2048), (2047, 100), (0, 0), (-1, 4095), (1000, 3)])
def test_integrate_on_int32_equals_int64_step_by_step(du, dv):
    """Inputs inside int32_is_exact's bound integrate on int32 and give exactly the int64 trace,
    wraps and saturation of u and v included; outside it integrate stays on int64."""
    from calibration.fixed_point import INT32_A_LIMIT, integrate, int32_is_exact
    g = torch.Generator().manual_seed(du + 7 * dv)
    a = torch.randint(-(1 << 17), 1 << 17, (12, 3000), generator=g)  # big enough to wrap u and saturate v
    bias = torch.randint(-(1 << 15), 1 << 15, (3000,), generator=g)
    assert int32_is_exact(a, bias) and not int32_is_exact(a * 0 + INT32_A_LIMIT, bias)
    s, u, v = integrate(a, du=du, dv=dv, bias=bias, vth=5000, record_state=True)
    uu, vv = torch.zeros(3000, dtype=I64), torch.zeros(3000, dtype=I64)
    for k in range(12):
        uu, _h, ss, vv = lif_step(uu, vv, a[k], du=du, dv=dv, bias=bias, vth=5000)
        assert torch.equal(s[k], ss) and torch.equal(u[k], uu) and torch.equal(v[k], vv), k
    assert int(u.abs().max()) > 1 << 22 and int(s.sum()) > 0  # the test reaches the edges


# ---------------------------------------------------------------------- shared helpers (reference, calibration, QAT)

def test_decay_codes_have_the_du_offset():
    from calibration.fixed_point import decay_codes
    # du = (code + 1) / 4096, dv = code / 4096
    assert decay_codes(1.0, 0.0) == (4095, 0)
    assert decay_codes(0.5, 0.25) == (2047, 1024)
    assert decay_codes(1 / 4096, 4095 / 4096) == (0, 4095)


def test_integrate_runs_lif_step_from_zero_state():
    from calibration.fixed_point import integrate
    # du = 4095 (u = a << 6), dv = 2048 (v halves, toward zero), vth 10 (640):
    #   a = 6: u 384, h 384, no spike ; a = 6: u 384, h 192 + 384 = 576, no spike ;
    #   a = 2: u 128, h 288 + 128 = 416 ; a = 10: u 640, h 208 + 640 = 848 > 640: spike, v = 0
    a = t(6, 6, 2, 10).view(4, 1)
    s, u, v = integrate(a, du=4095, dv=2048, bias=t(0), vth=10, record_state=True)
    assert s.view(-1).tolist() == [False, False, False, True]
    assert u.view(-1).tolist() == [384, 384, 128, 640] and v.view(-1).tolist() == [384, 576, 416, 0]
    s2, u2, v2 = integrate(a, du=4095, dv=2048, bias=t(0), vth=10)
    assert torch.equal(s, s2) and u2 is None and v2 is None


def test_synapse_current_binary_and_graded_payloads():
    from calibration.fixed_point import synapse_current
    from calibration.integer_graph import Synapse
    # a binary synapse counts any non-zero payload as 1 (Lava num_message_bits = 0); a graded one
    # multiplies: payload [2, 3] into weights [5, 7] -> binary 5 + 7 = 12, graded 10 + 21 = 31
    x = t(2, 3).view(1, 2)
    w = t(5, 7).view(1, 2)
    binary = Synapse("b", "s", "d", "dense", w.numpy())
    graded = Synapse("g", "s", "d", "dense", w.numpy(), graded=True)
    assert synapse_current(binary, x, w).tolist() == [[12]]
    assert synapse_current(graded, x, w).tolist() == [[31]]
    # a dense output takes its target's shape when given
    assert synapse_current(graded, x, t(5, 7, 1, 1).view(2, 2), (2, 1, 1)).shape == (1, 2, 1, 1)


def test_sign_mode_is_one_rule_for_numpy_and_torch():
    import numpy as np
    from calibration.loihi2_limits import sign_mode, weight_range
    for w, mode in [([0, 3], "excitatory"), ([], "excitatory"), ([0, 0], "excitatory"), ([-1, 0], "inhibitory"),
                    ([-2, 4], "mixed")]:
        assert sign_mode(np.array(w)) == sign_mode(torch.tensor(w)) == mode
    assert weight_range("mixed") == (-256, 254) and weight_range("inhibitory") == (-255, 0)
