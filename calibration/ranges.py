"""Former home of the Loihi 2 register ranges, now :mod:`calibration.loihi2_limits` (one home per limit).

Kept only so that modules written against it keep importing (``deploy/lava_graph.py`` reads
``ranges.MESSAGE_BITS_GRADED``); import :mod:`calibration.loihi2_limits` instead.
"""

from .loihi2_limits import (  # noqa: F401
    A_LIMIT, ACT_SHIFT, BIAS_EXP_RANGE, BIAS_MANT_RANGE, DECAY_SHIFT, DECAY_UNITY, DELAY_MAX, DU_RANGE, DV_RANGE,
    MESSAGE_BITS_GRADED, UV_HALF, V_LIMIT, VTH_RANGE, WEIGHT_RANGE_EXCITATORY, WEIGHT_RANGE_INHIBITORY,
    WEIGHT_RANGE_MIXED, sign_mode, weight_range)
