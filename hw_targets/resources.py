"""Resources of an integer graph on a target: the public entry points of the three stages.

* :mod:`hw_targets.connectivity`: exact synapses, fan-in and fan-out of every synapse process;
* :mod:`hw_targets.packing`: the lava-loihi tiling of every layer onto cores, fan-in splits, the
  lower bound (an estimate fitted to Intel's compiler logs);
* :mod:`hw_targets.design_rules`: the named rules, one per limit of
  :mod:`calibration.loihi2_limits`, run by one checker.

Import from those modules; this one keeps the names callers used before the split.
"""

from .connectivity import SynapseConn, connectivity, stored_weight_bits, synapse_connectivity  # noqa: F401
from .design_rules import (  # noqa: F401
    DRCResult, Finding, LayerResources, SynapseResources, check_design_rules, require_design_rules)
