"""Loihi 2 register widths and ranges (lava-nc 0.10.0 ``fixed_pt`` models; ``loihi2-fixed-point.md``).

Plain constants and two rules on whole weight matrices, importable without torch (the Lava worker
process reads integer graphs with them). Calibration checks every value against them and never clips.
"""

import math

DECAY_SHIFT = 12
DECAY_UNITY = 1 << DECAY_SHIFT  # 4096
ACT_SHIFT = 6  # synaptic input and threshold are MSB-aligned by 6 bits
UV_HALF = 1 << 23  # u and v are 24-bit
V_LIMIT = UV_HALF - 1

# Parameter ranges of Loihi 2 (spec sections 1.2, 2.1, 6); checked by calibration, never clipped.
DU_RANGE = (0, 4095)
DV_RANGE = (0, 4095)
VTH_RANGE = (0, (1 << 17) - 1)
BIAS_MANT_RANGE = (-(1 << 12), (1 << 12) - 1)
BIAS_EXP_RANGE = (0, 7)
WEIGHT_RANGE_MIXED = (-256, 254)  # even values only (mixed-sign weights lose their LSB on Dense)
WEIGHT_RANGE_EXCITATORY = (0, 255)
WEIGHT_RANGE_INHIBITORY = (-255, 0)
DELAY_MAX = 62  # netx clamps synaptic delays to 62; Lava's DelayDense checks <= 63
MESSAGE_BITS_GRADED = 8
#: |a| must stay below this for ``a << 6`` to fit u's 24 bits (a stricter, per-neuron bound
#: including current accumulation is checked by calibration).
A_LIMIT = 1 << (23 - ACT_SHIFT)


def sign_mode(weight) -> str:
    """Lava's sign mode of a whole weight matrix (numpy array or torch tensor, any shape):
    ``excitatory`` when no weight is negative (an empty matrix too), ``inhibitory`` when none is
    positive, else ``mixed`` (``weightutils.determine_sign_mode``)."""
    if math.prod(weight.shape) == 0 or bool(weight.min() >= 0):
        return "excitatory"
    return "inhibitory" if bool(weight.max() <= 0) else "mixed"


def weight_range(mode: str) -> tuple[int, int]:
    """The integer weights Loihi 2 stores unchanged for a sign mode (mixed: even values only)."""
    return {"mixed": WEIGHT_RANGE_MIXED, "excitatory": WEIGHT_RANGE_EXCITATORY,
            "inhibitory": WEIGHT_RANGE_INHIBITORY}[mode]
