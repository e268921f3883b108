"""User-facing errors and the exit codes every command shares.

A :class:`XoresnetError` is a problem with the user's input or environment: commands print its
message as one line and exit with its ``exit_code``; they never print a traceback for it.

====  =============================================================================
code  meaning
====  =============================================================================
0     success
1     internal error (a bug: please report it; ``XORESNET_DEBUG=1`` shows the traceback)
2     usage error (bad command-line arguments)
3     bad input file: missing, corrupt or refused checkpoint; missing dataset files
4     model not deployable: unsupported architecture or neuron, NaN/Inf weights,
      a parameter outside Loihi 2's ranges, a design-rule violation
5     parity failure: Lava and the integer reference disagree (dispatch blocked)
6     the Lava simulation failed or timed out
7     hardware dispatch requested but the Loihi 2 stack (lava-loihi) is unavailable
130   interrupted (Ctrl-C)
====  =============================================================================
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn


class XoresnetError(Exception):
    exit_code = 1


class ConfigError(XoresnetError):
    """An invalid or unsupported network configuration."""

    exit_code = 4


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


def run_cli(prog: str, main: Callable[[], int | None]) -> NoReturn:
    """Run ``main`` and turn every failure into one line on stderr plus a documented exit code."""
    try:
        code = main() or 0
    except XoresnetError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # noqa: BLE001 - the last line of defence of a command
        if os.environ.get("XORESNET_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"{prog}: internal error: {type(e).__name__}: {first} (set XORESNET_DEBUG=1 for the traceback)",
              file=sys.stderr)
        code = 1
    sys.exit(code)
