"""Every Loihi 2 limit, once, with its source: register widths and ranges, per-core budgets, chips.

The one home of each limit. Calibration (:meth:`~calibration.integer_graph.IntegerGraph.validate`,
quantization, :mod:`calibration.fixed_point`), the scheduler (:mod:`calibration.schedule`) and the
design rules and packing of :mod:`hw_targets` read them from here; nothing else states a Loihi
figure. Plain constants and two functions, importable without torch (the Lava worker process
reads integer graphs with them).

Every figure is a :class:`Limit` with its ``source`` and an **evidence grade**:

* ``CODE``: read in Lava / lava-dl source (lava-nc 0.10.0, lava-dl 0.6.0);
* ``RUN``: confirmed by running lava-nc 0.10.0 (``loihi2-fixed-point.md``);
* ``LOG``: printed by Intel's lava-loihi compiler in the committed cell outputs of the lava-dl
  tutorial notebooks (real Loihi 2 runs): ``yolo_kp/run.ipynb``, ``pilotnet_snn/benchmark.ipynb``,
  ``oxford/run.ipynb``, ``mnist/run.ipynb`` under ``tutorials/lava/lib/dl/netx/``;
* ``INFER``: derived here from those logs (an **estimate**: the compiler's rule is not public);
* ``MEM``: from memory of an Intel publication, not checked (an **estimate**).

References: ``/work/shared/reference/loihi2-fixed-point.md`` (sections 1, 2, 6) and
``loihi2-resources.md`` (which supersedes section 6's fan-in row: 4,096 input axons per core is
a Loihi 1 figure). The cost model that turns a layer into SynMem units lives with the packer
(:mod:`hw_targets.packing`); the budgets it is checked against live here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: Evidence grades (see the module docstring); INFER and MEM figures are estimates.
EVIDENCE = ("CODE", "RUN", "LOG", "INFER", "MEM")
ESTIMATE_GRADES = ("INFER", "MEM")

_FP = "loihi2-fixed-point.md"
_RES = "loihi2-resources.md"
_NETX = "lava-dl tutorials/lava/lib/dl/netx"


@dataclass(frozen=True)
class Limit:
    """One hardware limit: ``value`` (an int, or an inclusive ``(lo, hi)`` range) in ``unit``.

    ``source`` says where the figure comes from, ``evidence`` how it is known (:data:`EVIDENCE`);
    ``enforced`` is False for informational limits the design rules do not enforce.
    """

    name: str
    value: Any
    unit: str
    source: str
    evidence: str
    description: str = ""
    enforced: bool = True

    def __post_init__(self):
        if self.evidence not in EVIDENCE:
            raise ValueError(f"limit {self.name}: evidence {self.evidence!r} is not one of {EVIDENCE}")

    @property
    def estimate(self) -> bool:
        """True for figures inferred from logs or known only from memory."""
        return self.evidence in ESTIMATE_GRADES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = list(self.value) if isinstance(self.value, tuple) else self.value
        d["estimate"] = self.estimate
        return d


# ---------------------------------------------------------------------- neuron arithmetic (fixed_pt)

from xoresnet.decay_grid import DECAY_SHIFT, DECAY_UNITY  # noqa: E402,F401  (the decay grid's one home)
ACT_SHIFT = 6  # synaptic input and threshold are MSB-aligned by 6 bits
UV_HALF = 1 << 23  # u and v are 24-bit
V_LIMIT = UV_HALF - 1
#: |a| must stay below this for ``a << 6`` to fit u's 24 bits (a stricter, per-neuron bound
#: including current accumulation is checked by calibration).
A_LIMIT = 1 << (23 - ACT_SHIFT)
#: Payload bits of the graded input spikes (8-bit pixels, ``num_message_bits`` of the first synapses).
MESSAGE_BITS_GRADED = 8

DU = Limit("du_range", (0, 4095), "12-bit current decay code", f"lava proc/lif/models.py: du LavaPyType(int, "
           f"np.uint16, 12); effective decay du + 1 ({_FP} section 1.2-1.3)", "CODE")
DV = Limit("dv_range", (0, 4095), "12-bit voltage decay code", f"lava proc/lif/models.py: dv 12 bits ({_FP} 1.2)",
           "CODE")
VTH = Limit("vth_range", (0, (1 << 17) - 1), "17-bit threshold mantissa", f"lava proc/lif/models.py: vth "
            f"LavaPyType(int, np.int32, 17), compared as vth << 6 ({_FP} 1.2)", "CODE")
BIAS_MANT = Limit("bias_mant_range", (-(1 << 12), (1 << 12) - 1), "13-bit bias mantissa",
                  f"lava proc/lif/models.py: bias_mant 13 bits ({_FP} 1.2)", "CODE")
BIAS_EXP = Limit("bias_exp_range", (0, 7), "3-bit bias exponent", f"lava proc/lif/process.py docstring 'unsigned "
                 f"0..7' ({_FP} 1.2)", "CODE")
DU_RANGE, DV_RANGE, VTH_RANGE = DU.value, DV.value, VTH.value
BIAS_MANT_RANGE, BIAS_EXP_RANGE = BIAS_MANT.value, BIAS_EXP.value

# ---------------------------------------------------------------------- synapses

WEIGHT_BITS = Limit("weight_bits", 8, "bits per weight", f"Lava Dense/Sparse fixed-point models: num_weight_bits "
                    f"1..8, clip_weights(num_bits=8); mixed sign keeps 7 magnitude bits + sign (even values, "
                    f"[-256, 254]), single sign 0..255 ({_FP} section 2.1)", "CODE")
WEIGHT_RANGE_MIXED = (-256, 254)  # even values only (mixed-sign weights lose their LSB on Dense)
WEIGHT_RANGE_EXCITATORY = (0, 255)
WEIGHT_RANGE_INHIBITORY = (-255, 0)
WEIGHT_EXP = Limit("weight_exp_range", (-7, 7), "shift of a dense/identity synapse sum",
                   "the range this toolchain emits (a sign and 3 bits, as Loihi 1's weight exponent); Lava's "
                   f"simulator shifts by any integer and the Loihi 2 field width is not public ({_FP} 2.1)", "MEM",
                   "Lava's Conv ignores weight_exp: a conv synapse must have 0.")
WEIGHT_EXP_RANGE = WEIGHT_EXP.value
DELAY = Limit("delay_max", 62, "steps of synaptic delay", f"lava-dl netx clamps delays to 62 (netx/hdf5.py); Lava's "
              f"DelayDense/DelaySparse check <= 63 ('6 bits'); Lava's Conv has no delay ({_FP} 2.3)", "CODE")
DELAY_MAX = DELAY.value
#: Bits of a synapse's delay field in synaptic memory (a delayed Sparse/Dense process).
DELAY_FIELD_BITS = 6
GRADED_PAYLOAD = Limit("graded_payload_bits", 24, "bits per graded spike", f"Lava's graded processes "
                       f"(lava proc/graded, GradedVec) carry 24-bit payloads; Loihi 2 hardware up to 32 bits [MEM] "
                       f"({_FP} 1.5, {_RES} section 3)", "CODE")
RESET_INTERVAL = Limit("reset_interval", 2, "power of two", f"LIFReset on Loihi 2 hardware resets only at power-of-two "
                       f"intervals ({_NETX}/mnist/run.ipynb; {_FP} 1.5)", "CODE",
                       "value 2: the reset interval must be a power of 2")

# ---------------------------------------------------------------------- per-core budgets (lava-loihi partitioner)

NEURONS_PER_CORE = Limit(
    "neurons_per_core", 4096, "neurons per core",
    f"lava-loihi resource table 'Neurons': 10 neurons = 0.24% ({_NETX}/mnist/run.ipynb), 3,584 = 87.52% "
    f"({_NETX}/yolo_kp/run.ipynb) ({_RES} section 1)", "LOG")
NEURONS_PER_TILE = Limit(
    "neurons_per_tile", 3584, "neurons allocated per layer tile",
    f"every full tile in {_NETX}/yolo_kp/run.ipynb holds 3,584 neurons (87.52%); pilotnet_snn/benchmark.ipynb "
    f"cuts Conv(22, 4, 64) into three 8x4x64 tiles rather than two of 4,096 ({_RES} section 2)", "INFER",
    "The largest tile the compiler allocates; tile widths are powers of two, so a tile's allocation counts "
    "its padded width (hw_targets.packing).")
SYNMEM_UNITS_PER_CORE = Limit(
    "synmem_units_per_core", 12000, "SynMem units per core",
    f"lava-loihi partitioner: 'Violation ... reg_name='SynMem' allocation=16128 ... registers[reg_name]=12000' "
    f"forced a split ({_NETX}/oxford/run.ipynb, pilotnet_snn/benchmark.ipynb; {_RES} section 1)", "LOG",
    "A unit is taken as 64 bits (hw_targets.packing: the cost model fitted to the logs in those units).")
AXON_IN_UNITS_PER_CORE = Limit(
    "axon_in_units_per_core", 16000, "AxonIn units per core",
    f"lava-loihi resource table 'AxonIn': a dense layer with 784 inputs uses 4.90% ({_NETX}/mnist/run.ipynb); "
    f"PilotNet's dense layer over 2,560 inputs logs 2560 units ({_RES} section 1)", "INFER",
    "About 16,000: one unit per input of a dense/sparse synapse, CONV_AXON_IN_UNITS per conv input.")
CONV_AXON_IN = Limit(
    "conv_axon_in_units", 2, "AxonIn units per conv input of a core",
    f"every conv layer of {_NETX}/yolo_kp/run.ipynb logs AxonIn 0.01% (<= 1.6 units) and PilotNet's conv layers "
    "1 or 2 units, whatever the channel count (pilotnet_snn/benchmark.ipynb)", "LOG")
NEURON_GROUPS_PER_CORE = Limit(
    "neuron_groups_per_core", 8, "neuron groups per core",
    f"lava-loihi resource 'NeuronGr': one group = 12.5% ({_NETX}/yolo_kp/run.ipynb, mnist/run.ipynb)", "INFER")
CORE_MEMORY = Limit(
    "core_memory", 1, "fraction of a core's memory",
    f"the 'Total' column of {_NETX}/yolo_kp/run.ipynb equals 0.2 x Neurons + 0.8 x (Synapses + AxonMap + AxonMem) "
    "on all ten rows (to 0.005 percentage points): neuron state and the synapse/axon tables share one memory",
    "INFER",
    "Checked as 0.2 x neurons / neurons_per_core + 0.8 x (SynMem + output-route units) / synmem_units_per_core "
    "<= 1; one route unit per (source neuron, destination core) of a sparse/dense synapse (PilotNet's dense "
    "layers log AxonMap = their neuron count) and per (source core, destination core) of a convolution.")
#: Weights of the core-memory fraction (see :data:`CORE_MEMORY`).
CORE_MEMORY_NEURON_WEIGHT = 0.2
CORE_MEMORY_TABLE_WEIGHT = 0.8

# ---------------------------------------------------------------------- chips

CORES_PER_CHIP = Limit(
    "cores_per_chip", 120, "neuro-cores per chip",
    "lava magma/compiler/subcompilers/constants.py: NUM_VIRTUAL_CORES_L3 = 120, the cores per Loihi 2 (N3) chip "
    "of Lava's mapper (magma/compiler/mapper.py); 128 physical cores [MEM]", "CODE")
NEURONS_PER_CHIP = Limit("neurons_per_chip", 1 << 20, "neurons per chip",
                         f"Intel Loihi 2 tech brief (2021): ~1 M neurons per chip ({_FP} section 6)", "MEM",
                         enforced=False)
SYNAPSES_PER_CHIP = Limit("synapses_per_chip", 120_000_000, "synapses per chip",
                          f"Intel Loihi 2 tech brief (2021): ~120 M synapses per chip ({_FP} section 6)", "MEM",
                          enforced=False)

#: Every limit by name (the ``loihi2`` target's limits).
LIMITS: dict[str, Limit] = {l.name: l for l in (
    CORES_PER_CHIP, NEURONS_PER_CORE, NEURONS_PER_TILE, SYNMEM_UNITS_PER_CORE, AXON_IN_UNITS_PER_CORE, CONV_AXON_IN,
    NEURON_GROUPS_PER_CORE, CORE_MEMORY, WEIGHT_BITS, WEIGHT_EXP, DELAY, GRADED_PAYLOAD, RESET_INTERVAL, DU, DV,
    VTH, BIAS_MANT, BIAS_EXP, NEURONS_PER_CHIP, SYNAPSES_PER_CHIP)}
#: The per-core and per-chip budgets a CPU simulation is not bound by (``lava-sim`` reports them as warnings).
CAPACITY_LIMITS = ("cores_per_chip", "neurons_per_core", "neurons_per_tile", "synmem_units_per_core",
                   "axon_in_units_per_core", "neuron_groups_per_core", "core_memory")


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
