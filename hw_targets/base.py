"""The common interface of a deployment target: its limits, its systems, its energy model, dispatch.

A target is a :class:`HwTarget` (a plain object with a few fields and one method, ``dispatch``).
Every hardware limit is a :class:`Limit`: a named value with the **source** it comes from and an
``estimate`` flag. ``estimate=True`` marks a figure that is known only from memory of a
publication, or inferred, and that cannot be verified without Intel's proprietary compiler
(``[MEM]`` in ``loihi2-fixed-point.md``); reports print such limits as estimates.

Errors raised here (exit codes of :mod:`xoresnet.errors`):

* :class:`UnknownTargetError` (a :class:`~xoresnet.errors.UsageError`, exit code 2):
  ``get_target("nonsense")``.
* :class:`NoHardwareError` (a :class:`~xoresnet.errors.DispatchUnavailableError`, exit code 7):
  ``dispatch`` on a target that has no hardware behind it (the Lava CPU simulator, ONNX).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from xoresnet.errors import DispatchUnavailableError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .energy import EnergyTable


class UnknownTargetError(UsageError):
    """An unknown target or system name (a usage error)."""


class NoHardwareError(DispatchUnavailableError):
    """Hardware dispatch asked of a target that is a simulator (exit code 7, like a missing stack)."""


@dataclass(frozen=True)
class Limit:
    """One hardware limit. ``value`` in ``unit``; ``source`` says where the figure comes from."""

    name: str
    value: int
    unit: str
    source: str
    estimate: bool
    description: str = ""
    #: False for informational limits the design-rule check does not enforce.
    enforced: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class System:
    """A Loihi system: a number of chips."""

    name: str
    key: str
    chips: int
    source: str
    estimate: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HwTarget:
    """A deployment target.

    ``limits``: by name (see :mod:`hw_targets.loihi2` for the names the design-rule check uses).
    ``systems``: the systems a mapped network can be checked against, smallest first.
    ``has_hardware``: whether :meth:`dispatch` can ever run on a chip.
    ``no_dispatch``: for a target without hardware, one line saying why it cannot dispatch and what
    to do instead (:meth:`dispatch_status` reports it, :meth:`dispatch` raises it).
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

    def dispatch(self, export_dir, pixels=None, **kwargs) -> Any:
        """Run an export on the hardware; a target without hardware raises :class:`NoHardwareError`."""
        raise NoHardwareError(self.dispatch_status()[1])

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


def fmt_limit(limit: Limit, value: Optional[float] = None) -> str:
    """``"4096 neurons per core (estimate)"``."""
    v = limit.value if value is None else value
    return f"{v:g} {limit.unit}" + (" (estimate)" if limit.estimate else "")
