"""The console scripts (``xoresnet-train``, ``-eval``, ``-export``, ``-report``): interrupt handling first.

A command's module imports torch, numpy and Lava's helpers, which takes about a second; a Ctrl-C (or a
SIGTERM, SIGHUP) in that second used to print a 34-line ``KeyboardInterrupt`` traceback from inside an
import. These entry points install the handlers of :func:`xoresnet.interrupts.install_interrupt_handlers`
before importing anything heavy (this module and :mod:`xoresnet.interrupts` import only the standard
library), so the command's one-line ``interrupted`` and its exit code hold from the first instruction.
"""

from __future__ import annotations

import sys

from .interrupts import install_interrupt_handlers, interrupted_exit, received_interrupt


def _run(prog: str, module: str, function: str) -> None:
    install_interrupt_handlers()
    try:
        main = getattr(__import__(module, fromlist=[function]), function)
    except BaseException as e:
        # a signal during the imports: raised here, or swallowed by a library's import machinery, which then
        # fails on its own (numpy's C core, interrupted half-initialised, raises "cannot load module more than
        # once per process" when torch imports it again)
        interrupt = e if isinstance(e, KeyboardInterrupt) else received_interrupt()
        if interrupt is None:
            raise
        sys.exit(interrupted_exit(prog, interrupt))
    swallowed = received_interrupt()  # a library's import caught the Interrupted and carried on
    if swallowed is not None:
        sys.exit(interrupted_exit(prog, swallowed))
    main()


def train() -> None:
    _run("xoresnet-train", "xoresnet.cli", "train_main")


def evaluate() -> None:
    _run("xoresnet-eval", "xoresnet.cli", "eval_main")


def export() -> None:
    _run("xoresnet-export", "deploy.cli", "export_main")


def report() -> None:
    _run("xoresnet-report", "hw_targets.cli", "report_main")
