"""Deployment targets: limits, design-rule check, statistics, energy and reports.

Targets (:data:`TARGETS`, :func:`get_target`):

* ``loihi2`` (default, :mod:`hw_targets.loihi2`): Intel Loihi 2 hardware; dispatch needs lava-loihi.
* ``lava-sim`` (:mod:`hw_targets.lava_sim`): Lava's CPU simulator; no dispatch.
* ``onnx``: reserved for the ONNX export target (``hw_targets/onnx.py``, written separately); it
  registers itself with :func:`register_target`.

An unknown name raises :class:`~hw_targets.base.UnknownTargetError` (a usage error, exit code 2).
"""

from __future__ import annotations

from typing import Optional

from .base import HwTarget, Limit, NoHardwareError, System, UnknownTargetError
from .lava_sim import LAVA_SIM
from .loihi2 import LOIHI2

DEFAULT_TARGET = "loihi2"
TARGETS: dict[str, HwTarget] = {LOIHI2.name: LOIHI2, LAVA_SIM.name: LAVA_SIM}
#: Names reserved for targets implemented elsewhere (not registered until their module is).
RESERVED_TARGETS = {"onnx": "hw_targets.onnx"}


def register_target(target: HwTarget) -> None:
    TARGETS[target.name] = target


def get_target(name: Optional[str] = None) -> HwTarget:
    """The target called ``name`` (default :data:`DEFAULT_TARGET`)."""
    name = name or DEFAULT_TARGET
    if name in TARGETS:
        return TARGETS[name]
    if name in RESERVED_TARGETS:
        import importlib

        try:
            importlib.import_module(RESERVED_TARGETS[name])
        except ModuleNotFoundError as e:
            if e.name != RESERVED_TARGETS[name]:
                raise
        if name in TARGETS:
            return TARGETS[name]
        raise UnknownTargetError(f"target {name!r} is not available yet (module {RESERVED_TARGETS[name]} "
                                 f"is missing); available: {', '.join(sorted(TARGETS))}")
    raise UnknownTargetError(f"unknown target {name!r}; available: {', '.join(sorted(TARGETS))}")


__all__ = ["DEFAULT_TARGET", "TARGETS", "HwTarget", "Limit", "NoHardwareError", "System", "UnknownTargetError",
           "get_target", "register_target"]
