"""User-facing errors and the exit codes every command shares.

A :class:`XoresnetError` is a problem with the user's input or environment: commands print its
message as one line and exit with its ``exit_code``; they never print a traceback for it.

====  =============================================================================
code  meaning
====  =============================================================================
0     success
1     internal error (a bug: please report it; ``XORESNET_DEBUG=1`` shows the traceback)
2     usage error: a bad command-line argument, including a network flag the config refuses
3     bad input file: missing, corrupt, malformed or refused checkpoint (a field of the wrong
      JSON kind, NaN/Inf weights, ...); missing dataset files
4     model not deployable: unsupported architecture or neuron, a parameter outside
      Loihi 2's ranges, a design-rule violation
5     parity failure: Lava and the integer reference disagree (dispatch blocked)
6     the Lava simulation failed or timed out
7     hardware dispatch requested but the Loihi 2 stack (lava-loihi) is unavailable
130   interrupted (Ctrl-C); 143 for SIGTERM, 129 for SIGHUP (128 + the signal), after the same cleanup
====  =============================================================================

A network config is refused with :class:`ConfigError`; its code depends on where the config
came from. Read from a checkpoint, a well-formed config that names something this xoresnet does
not build or deploy (an unknown block type or stem, selection ``mid`` in a Bottleneck, a decay
off Loihi's grid, ...) is exit 4, like any unsupported model, and a malformed one (not a JSON
object, unknown keys, a field of the wrong JSON kind, a size or number outside its range: see
:meth:`xoresnet.config.NetworkConfig.validate`) is :class:`ConfigFormatError`, exit 3. Built
from command-line flags, every refusal is the user's usage error: the CLI re-raises it as
:class:`UsageError`, exit 2. The ``arch`` field is a label (the layers come from ``block_type``
and ``blocks_per_stage``), so an unknown architecture name is a usage error for ``--arch`` and
no error at all inside a checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from typing import Callable, NoReturn

from .interrupts import install_interrupt_handlers, interrupted_exit, received_interrupt


class XoresnetError(Exception):
    exit_code = 1


class UsageError(XoresnetError):
    """A bad command-line argument (what argparse reports, as one line)."""

    exit_code = 2


class ConfigError(XoresnetError):
    """A well-formed but unsupported network configuration (see the module docstring)."""

    exit_code = 4


class ConfigFormatError(ConfigError):
    """A malformed network configuration: not an object, unknown keys, a field of the wrong kind."""

    exit_code = 3


class CheckpointError(XoresnetError):
    exit_code = 3


class DataError(XoresnetError):
    exit_code = 3


class UnsupportedModelError(XoresnetError):
    exit_code = 4


class RangeError(XoresnetError):
    """A parameter that does not fit Loihi 2's fixed-point ranges (never silently clipped)."""

    exit_code = 4


class DesignRuleError(XoresnetError):
    exit_code = 4


class ParityError(XoresnetError):
    exit_code = 5


class LavaRunError(XoresnetError):
    exit_code = 6


class DispatchUnavailableError(XoresnetError):
    exit_code = 7


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` instead of printing the
    multi-line usage: :func:`run_cli` prints them as one line, exit 2. Parse inside ``run_cli``;
    ``--help`` still prints the full help and exits with 0."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def number(kind: type, *, minimum: float = 0, inclusive: bool = False,
           maximum: float | None = None) -> Callable[[str], int | float]:
    """An argparse type: a finite ``kind`` (``int`` or ``float``) above ``minimum`` (or equal, ``inclusive``)
    and, when given, at most ``maximum``."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value
    return parse


def run_cli(prog: str, main: Callable[[], int | None]) -> NoReturn:
    """Run ``main`` and turn every failure into one line on stderr plus a documented exit code.

    SIGINT, SIGTERM and SIGHUP interrupt it like Ctrl-C (:func:`install_interrupt_handlers`: the cleanup runs,
    then one line and exit code 128 + signal); the previous handlers are restored afterwards."""
    previous = install_interrupt_handlers()
    try:
        try:
            code = main() or 0
        except XoresnetError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            code = e.exit_code
        except KeyboardInterrupt as e:
            code = interrupted_exit(prog, e)
        except Exception as e:  # noqa: BLE001 - the last line of defence of a command
            swallowed = received_interrupt()  # a library caught the Interrupted and failed later
            if swallowed is not None:
                raise swallowed from e
            if os.environ.get("XORESNET_DEBUG"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"{prog}: internal error: {type(e).__name__}: {first} (set XORESNET_DEBUG=1 for the traceback)",
                  file=sys.stderr)
            code = 1
    except KeyboardInterrupt as e:  # a signal while an error was being reported
        code = interrupted_exit(prog, e)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code)
