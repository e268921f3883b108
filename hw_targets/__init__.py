"""Deployment targets: limits, design-rule check, statistics, energy and reports.

Targets (:data:`TARGETS`, :func:`get_target`):

* ``loihi2`` (default, :mod:`hw_targets.loihi2`): Intel Loihi 2 hardware; dispatch needs lava-loihi.
* ``lava-sim`` (:mod:`hw_targets.lava_sim`): Lava's CPU simulator; no dispatch.
* ``onnx`` (:mod:`hw_targets.onnx`): the float model per timestep for ONNX Runtime; no dispatch. It
  imports torch and onnx, so it registers itself (:func:`register_target`) only when first asked for.

:func:`available_targets` lists them all, registered or not. An unknown name raises
:class:`~hw_targets.base.UnknownTargetError` (a usage error, exit code 2) naming every target.
"""

from __future__ import annotations

from typing import Optional

from .base import HwTarget, Limit, NoHardwareError, System, UnknownTargetError
from .lava_sim import LAVA_SIM
from .loihi2 import LOIHI2

DEFAULT_TARGET = "loihi2"
TARGETS: dict[str, HwTarget] = {LOIHI2.name: LOIHI2, LAVA_SIM.name: LAVA_SIM}
#: Targets registered by their module when first asked for (name -> module).
RESERVED_TARGETS = {"onnx": "hw_targets.onnx"}


def available_targets() -> list[str]:
    """Every target name, the default first, the lazily registered ones included."""
    return [DEFAULT_TARGET] + sorted((set(TARGETS) | set(RESERVED_TARGETS)) - {DEFAULT_TARGET})


def register_target(target: HwTarget) -> None:
    TARGETS[target.name] = target


def get_target(name: Optional[str] = None) -> HwTarget:
    """The target called ``name`` (``None``: :data:`DEFAULT_TARGET`; an empty name is unknown, not the default)."""
    name = DEFAULT_TARGET if name is None else name
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
        raise UnknownTargetError(f"target {name!r} is not available (module {RESERVED_TARGETS[name]} "
                                 f"is missing); available: {', '.join(sorted(TARGETS))}")
    raise UnknownTargetError(f"unknown target {name!r}; available: {', '.join(available_targets())}")


__all__ = ["DEFAULT_TARGET", "TARGETS", "HwTarget", "Limit", "NoHardwareError", "System", "UnknownTargetError",
           "available_targets", "get_target", "register_target"]
