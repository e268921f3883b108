"""Loihi 2's decay grid: the one place that maps a decay fraction to its 12-bit register and back.

A Loihi 2 CUBA neuron (lava-nc 0.10.0 ``lava/proc/lif/models.py`` ``PyLifModelBitAcc``, l.94-95; reference
``loihi2-fixed-point.md`` section 2) decays its current by ``(du_code + 1) / 4096`` per step (``ds_offset =
1``) and its voltage by ``dv_code / 4096`` (``dm_offset = 0``), with ``du_code``, ``dv_code`` 12-bit registers
in ``0..4095``. So a current decay fraction ``du`` must be ``k / 4096`` with ``k`` in ``1..4096`` and a voltage
decay fraction ``dv`` in ``0..4095 / 4096``.

Fractions are floats in ``[0, 1]`` (the part of the state lost per step); codes are the register integers.
The model trains on this grid (:func:`xoresnet.neuron.snap_to_decay_grid`), its config is checked against it,
imported NIR decays are placed on it (with a tolerance the user sets) and calibration writes its codes.
"""

from __future__ import annotations

import math

DECAY_SHIFT = 12
DECAY_UNITY = 1 << DECAY_SHIFT  # 4096: du, dv are 12-bit fractions of it
#: The register offset of each decay: the current's ``ds_offset = 1``, the voltage's ``dm_offset = 0``.
DU_OFFSET, DV_OFFSET = 1, 0


def nearest_decay_code(fraction: float, *, offset: int) -> tuple[int, float]:
    """``(code, error)``: the register code in ``0..4095`` whose fraction ``(code + offset) / 4096`` is
    nearest to ``fraction``, and ``|fraction - that fraction|``."""
    code = min(max(round(fraction * DECAY_UNITY - offset), 0), DECAY_UNITY - 1)
    return code, abs(fraction - decay_fraction(code, offset=offset))


def bracketing_decay_codes(fraction: float, *, offset: int) -> list[int]:
    """The one or two register codes whose fractions lie nearest below and above ``fraction`` (for messages
    naming the nearest legal values)."""
    low = min(max(math.floor(fraction * DECAY_UNITY - offset), 0), DECAY_UNITY - 1)
    return sorted({low, min(low + 1, DECAY_UNITY - 1)})


def decay_fraction(code: int, *, offset: int) -> float:
    """The decay fraction of register ``code`` (``(code + offset) / 4096``)."""
    return (code + offset) / DECAY_UNITY


def on_decay_grid(fraction: float, *, offset: int, tolerance: float = 1e-9 / DECAY_UNITY) -> bool:
    """True when ``fraction`` is within ``tolerance`` of a legal grid point (``offset`` 1 for du, 0 for dv)."""
    return nearest_decay_code(fraction, offset=offset)[1] <= tolerance


def decay_codes(du: float, dv: float) -> tuple[int, int]:
    """Loihi's ``(du_code, dv_code)`` registers for decay fractions on the grid (the ``du + 1`` offset)."""
    return nearest_decay_code(du, offset=DU_OFFSET)[0], nearest_decay_code(dv, offset=DV_OFFSET)[0]
