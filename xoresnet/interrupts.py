"""Termination signals as exceptions, importable before anything else (standard library only).

SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``) and SIGHUP (a closed terminal) all raise
:class:`Interrupted`, a ``KeyboardInterrupt``, so every cleanup path of a command (``except
BaseException``, ``finally``: the temporary artifact folder, the Lava child's session and shared memory,
its scratch folder) runs the same way for each; the command then prints one line and exits with
``128 + signum`` (130 for Ctrl-C). :mod:`xoresnet.entry` installs the handlers before a command's heavy
imports, :func:`xoresnet.errors.run_cli` around the command.
"""

from __future__ import annotations

import signal
import sys


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGINT, SIGTERM, SIGHUP), raised like Ctrl-C's ``KeyboardInterrupt`` so that every
    cleanup path (``except BaseException``, ``finally``) runs; :func:`xoresnet.errors.run_cli` exits with
    ``128 + signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


#: The signals a command turns into :class:`Interrupted` (Ctrl-C, ``kill``/``timeout``, a closed terminal).
INTERRUPTS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


#: The signals received so far, in order. A library may swallow the raised :class:`Interrupted` (a bare
#: ``except:`` in an import, a ``__del__``) and fail later with an unrelated error; the record lets the
#: command still end as interrupted (:func:`received_interrupt`).
_RECEIVED: list[int] = []


def _interrupt(signum: int, frame) -> None:
    """The handler: records the signal and raises :class:`Interrupted` (never returns)."""
    _RECEIVED.append(signum)
    for sig in INTERRUPTS:  # once: a second signal must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def install_interrupt_handlers() -> dict[int, object]:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (once; later ones are ignored while the
    command cleans up). Returns the previous handlers (nothing is changed outside the main thread)."""
    previous = {}
    for sig in INTERRUPTS:
        if signal.getsignal(sig) is signal.SIG_IGN and sig != signal.SIGINT:
            continue  # started with the signal ignored (nohup): keep it so
        try:
            previous[sig] = signal.signal(sig, _interrupt)
        except ValueError:  # not the main thread: signals are the main thread's business
            break
    return previous


def received_interrupt() -> Interrupted | None:
    """The first termination signal this process received, as an :class:`Interrupted`, or None."""
    return Interrupted(_RECEIVED[0]) if _RECEIVED else None


def interrupted_exit(prog: str, e: KeyboardInterrupt) -> int:
    """Print the one line of an interrupted command; returns its exit code (130 for Ctrl-C, 128 + signal)."""
    signum = getattr(e, "signum", signal.SIGINT)
    name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    print(f"{prog}: interrupted{name}", file=sys.stderr)
    return 128 + signum
