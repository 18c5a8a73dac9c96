"""The command lines' shared behaviour (``accel`` and ``python -m benchmarks.*``): a bad
argument is one line naming it, exit status 2; Ctrl-C stops with one line, exit status
130 (what a shell reports for SIGINT). What a benchmark printed before the interrupt
stays printed: each prints its rows as it measures them."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

#: Seconds after a dropped Ctrl-C until it is raised again (out of the finalizer by then).
INTERRUPT_AGAIN_S = 0.01


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE``
    (argparse's own print the usage above it; ``--help`` still shows it). Its
    subcommands' parsers are of this class too (``add_subparsers`` takes the parent's)."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _unraisable(hook):
    """``sys.unraisablehook`` that raises an interrupt again where Python dropped it.
    Python calls the hook for an exception it cannot raise: one in a garbage
    collector's callback (JAX registers one) or a ``__del__``. A Ctrl-C that lands there
    would be printed as "Exception ignored" and lost, and the job would run on."""
    def unraisable(info):
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            # sent again to the main thread from another a moment later (a signal, so
            # that it wakes a sleep or a wait): sent from here (``signal.raise_signal``,
            # ``os.kill``), its handler would run at once inside this hook, and be
            # dropped too
            timer = threading.Timer(INTERRUPT_AGAIN_S, signal.pthread_kill,
                                    (threading.main_thread().ident, signal.SIGINT))
            timer.daemon = True
            timer.start()
        else:
            hook(info)
    return unraisable


def keep_interrupts() -> None:
    """Make every Ctrl-C reach the main program as ``KeyboardInterrupt`` (see
    ``_unraisable``); idempotent."""
    if getattr(sys.unraisablehook, "__name__", "") != "unraisable":
        sys.unraisablehook = _unraisable(sys.unraisablehook)


def run_command(main: Callable[[], object], prog: str) -> None:
    """Run a command line's ``main()`` and exit with its status (an int it returns, else
    0); on Ctrl-C print ``PROG: interrupted`` and exit with status 130 instead of a
    traceback."""
    keep_interrupts()
    try:
        status = main()
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(130)
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)
