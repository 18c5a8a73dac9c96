"""The command lines' shared behaviour (``accel`` and ``python -m benchmarks.*``): a bad
argument is one line naming it, exit status 2; Ctrl-C stops with one line, exit status
130 (what a shell reports for SIGINT). What a benchmark printed before the interrupt
stays printed: each prints its rows as it measures them."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

#: Seconds after a dropped Ctrl-C until it is raised again (out of the finalizer by then).
INTERRUPT_AGAIN_S = 0.01


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE``
    (argparse's own print the usage above it; ``--help`` still shows it). Its
    subcommands' parsers are of this class too (``add_subparsers`` takes the parent's)."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def positive_int(text: str) -> int:
    """An argument that must be a whole number of at least 1 (``type=`` of argparse)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def path(text: str) -> str:
    """A file or folder argument (``type=`` of argparse): not empty (an empty path is the
    current folder, which no command means to write into or read as its output), nor
    only spaces (a folder named " " is a typing slip)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(("an empty path" if not text else
                                          f"{text!r} is only spaces")
                                         + " (give a file or folder)")
    return text


def out_folder(text: str) -> str:
    """A folder a command writes (``type=`` of argparse): ``path``'s check, and no part of
    it an existing file, refused before any work (``train --out notes.txt/run`` trained
    for minutes, then failed to save)."""
    path(text)
    for part in (Path(text), *Path(text).parents):
        if part.exists():
            if not part.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{text}: {'it' if part == Path(text) else part} is a file, not a folder")
            break
    return text


def scheduler_address(text: str) -> str:
    """A Dask scheduler's address, ``PROTOCOL://HOST:PORT`` (``tcp://10.0.0.2:8786``),
    checked for its form before a sweep creates its folder; whether one answers there is
    known only on connecting."""
    found = re.fullmatch(r"[a-z]+://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):(\d+)", text)
    if not found or not 1 <= int(found[2]) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scheduler address "
                                         "(PROTOCOL://HOST:PORT, a port of 1 to 65535, e.g. "
                                         "tcp://10.0.0.2:8786 or tcp://[::1]:8786)")
    return text


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


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can act on, printed as one line with exit status 2: a bad config
    field, a missing checkpoint, a bad value (``CompileError``, ``HardwareError``,
    ``IsaError``, ``ProgramFileError`` and ``BuildError`` are ``ValueError``s), a path
    that is a file where a folder is wanted or an unreachable Dask scheduler
    (``OSError``, whose message names the path or the address). Imported when asked:
    the models import JAX."""
    from models.config import ConfigError
    from models.weights import CheckpointError

    return (ConfigError, CheckpointError, ValueError, OSError)


#: How an interrupted command line ends (replaced by the tests, which must go on).
_hard_exit = os._exit


def exit_interrupted(prog: str) -> None:
    """Print ``PROG: interrupted`` and end the process with status 130 at once: what was
    printed is flushed, every ``finally`` has run (the exception came up through them),
    and the interpreter's teardown is skipped, where XLA, stopped in the middle of a
    computation, crashed with SIGSEGV in about half of the interrupts tried."""
    sys.stderr.write(f"{prog}: interrupted\n")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if "multiprocessing.util" in sys.modules:
        # what the skipped teardown would do for multiprocessing: release its named
        # semaphores (else its resource tracker, outliving us, warns of them as leaked)
        sys.modules["multiprocessing.util"]._run_finalizers(0)
    _hard_exit(130)


def run_command(main: Callable[[], object], prog: str) -> None:
    """Run a command line's ``main()`` and exit with its status (an int it returns, else
    0). An error the user can act on (``user_errors``) is one line, ``PROG: error:
    MESSAGE``, with exit status 2; Ctrl-C is ``exit_interrupted``."""
    keep_interrupts()
    try:
        status = main()
    except KeyboardInterrupt:
        exit_interrupted(prog)
        raise                                  # (only where ``_hard_exit`` returns)
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        sys.stderr.write(f"{prog}: error: {error_message(e)}\n")
        sys.exit(2)
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)


def error_message(e: Exception) -> str:
    """The line ``run_command`` prints for a user error: an ``OSError`` on a path as the
    path and its reason (``/proc/x: No such file or directory``, as ``mkdir`` says it,
    not Python's ``[Errno 2] ...: '/proc/x'``), anything else as its message."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return f"{where}: {e.strerror}"
    return str(e)


def accel_command() -> None:
    """The ``accel`` console script (``pyproject.toml``): ``accel.cli.main``, Ctrl-C
    handled from before its imports (JAX takes about a second to import)."""
    def main():
        from accel.cli import main

        return main()
    run_command(main, "accel")
