"""The common interface of a deployment target: its limits, its systems, its energy model, dispatch status.

A target is a :class:`HwTarget`, a plain object; running on its hardware is :mod:`deploy.dispatch`'s business.
Every hardware limit is a :class:`~calibration.loihi2_limits.Limit` (defined, with every Loihi 2
figure, in :mod:`calibration.loihi2_limits`): a named value with the **source** it comes from and
an **evidence grade** (CODE, RUN, LOG, INFER, MEM); INFER and MEM figures are estimates (inferred
from compiler logs, or known only from memory of a publication), which reports print as such.

Errors raised here (exit codes of :mod:`xoresnet.errors`):

* :class:`UnknownTargetError` (a :class:`~xoresnet.errors.UsageError`, exit code 2):
  ``get_target("nonsense")``.
* :class:`NoHardwareError` (a :class:`~xoresnet.errors.DispatchUnavailableError`, exit code 7):
  :func:`deploy.dispatch.run_on_hardware` on a target that has no hardware behind it (the Lava CPU simulator,
  ONNX).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from calibration.loihi2_limits import ESTIMATE_GRADES, Limit
from xoresnet.errors import DispatchUnavailableError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .energy import EnergyTable


class UnknownTargetError(UsageError):
    """An unknown target or system name (a usage error)."""


class NoHardwareError(DispatchUnavailableError):
    """Hardware dispatch asked of a target that is a simulator (exit code 7, like a missing stack)."""


@dataclass(frozen=True)
class System:
    """A Loihi system: a number of chips; ``evidence`` grades ``source`` like a :class:`Limit`'s."""

    name: str
    key: str
    chips: int
    source: str
    evidence: str

    @property
    def estimate(self) -> bool:
        return self.evidence in ESTIMATE_GRADES

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "estimate": self.estimate}


@dataclass
class HwTarget:
    """A deployment target.

    ``limits``: by name (see :mod:`hw_targets.loihi2` for the names the design-rule check uses).
    ``systems``: the systems a mapped network can be checked against, smallest first.
    ``has_hardware``: whether :func:`deploy.dispatch.run_on_hardware` can ever run it on a chip.
    ``no_dispatch``: for a target without hardware, one line saying why it cannot dispatch and what
    to do instead (:meth:`dispatch_status` reports it, :func:`deploy.dispatch.run_on_hardware` raises it).
    """

    name: str
    description: str
    limits: dict[str, Limit]
    systems: tuple[System, ...]
    has_hardware: bool
    notes: tuple[str, ...] = field(default_factory=tuple)
    no_dispatch: str = ""

    def limit(self, name: str) -> Limit:
        return self.limits[name]

    def value(self, name: str) -> int:
        return self.limits[name].value

    def system(self, key: str) -> System:
        for s in self.systems:
            if key in (s.key, s.name):
                return s
        raise UnknownTargetError(f"unknown system {key!r} for target {self.name}; known: "
                                 + ", ".join(s.key for s in self.systems))

    def energy_table(self) -> "EnergyTable":
        from .energy import EnergyTable

        return EnergyTable.default()

    def dispatch_status(self) -> tuple[bool, str]:
        """``(available, one-line explanation)``; never raises. A target with hardware overrides it."""
        return False, self.no_dispatch or f"target {self.name} has no hardware to dispatch to"

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the report (``target`` section)."""
        available, note = self.dispatch_status()
        return {
            "name": self.name,
            "description": self.description,
            "has_hardware": self.has_hardware,
            "dispatch_available": available,
            "dispatch_note": note,
            "limits": {k: v.to_dict() for k, v in self.limits.items()},
            "systems": [s.to_dict() for s in self.systems],
            "notes": list(self.notes),
        }
