"""Spike logic on binary tensors, written as polynomials so autograd needs no custom function.

Each op is exact for ``a, b`` in {0, 1}; the gradient is that of the polynomial. On Loihi each
becomes a memoryless threshold neuron (see ``xoresnet-block.md``, "Mapping the logic"):

=====  ============  ================  =====================================================
op     value         polynomial        integer threshold construction (fire if sum >= 1)
=====  ============  ================  =====================================================
OR     a OR b        a + b - ab        weights (+1, +1)
AND    a AND b       ab                weights (+1, +1), fire if sum >= 2
IAND   (NOT a) AND b (1 - a) b         weights (-1 on a, +1 on b)
XOR    a XOR b       a + b - 2ab       h = AND(a, b), then weights (+1, +1, -2) on (a, b, h)
ADD    a + b         a + b             not a gate: both currents/edges into one node
=====  ============  ================  =====================================================
"""

from __future__ import annotations

import torch


def spike_or(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b - a * b


def spike_xor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b - 2 * a * b


def spike_and(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b


def spike_iand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(NOT a) AND b``: SEW-ResNet's IAND with ``a`` the backbone and ``b`` the shortcut."""
    return (1 - a) * b


def spike_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise sum (SEW-ADD); the result counts spikes and is no longer binary."""
    return a + b


SPIKE_OPS = {
    "or": spike_or,
    "xor": spike_xor,
    "and": spike_and,
    "iand": spike_iand,
    "add": spike_add,
}
