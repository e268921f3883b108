"""Spike logic: exact truth tables on {0,1} and the polynomial gradients."""

import itertools

import pytest
import torch

from xoresnet.spike_logic import SPIKE_OPS

TRUTH = {
    "or": lambda a, b: a | b,
    "xor": lambda a, b: a ^ b,
    "and": lambda a, b: a & b,
    "iand": lambda a, b: (1 - a) & b,
    "add": lambda a, b: a + b,
}
# d/da, d/db of each polynomial
GRADS = {
    "or": lambda a, b: (1 - b, 1 - a),
    "xor": lambda a, b: (1 - 2 * b, 1 - 2 * a),
    "and": lambda a, b: (b, a),
    "iand": lambda a, b: (-b, 1 - a),
    "add": lambda a, b: (1, 1),
}


@pytest.mark.parametrize("op", sorted(SPIKE_OPS))
def test_truth_table_and_gradient(op):
    for a, b in itertools.product((0, 1), repeat=2):
        ta = torch.tensor(float(a), requires_grad=True)
        tb = torch.tensor(float(b), requires_grad=True)
        out = SPIKE_OPS[op](ta, tb)
        assert float(out.detach()) == TRUTH[op](a, b)
        out.backward()
        assert (float(ta.grad), float(tb.grad)) == tuple(float(g) for g in GRADS[op](a, b))


def test_binary_ops_stay_binary_on_tensors():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 2, (4, 8, 8), generator=g).float()
    b = torch.randint(0, 2, (4, 8, 8), generator=g).float()
    for op in ("or", "xor", "and", "iand"):
        out = SPIKE_OPS[op](a, b)
        assert set(out.unique().tolist()) <= {0.0, 1.0}
