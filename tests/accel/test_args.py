"""The command lines' shared behaviour (``accel.args``): one-line argument errors, and
Ctrl-C as one line and exit status 130, even where Python would drop the interrupt."""

import sys
import time

import pytest

from accel.args import keep_interrupts, run_command
from accel.cli import main


def test_a_bad_argument_is_one_line_without_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "spec.toml", "-o", "out", "--workers", "many"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == \
        "accel sweep: error: argument --workers: invalid int value: 'many'\n"


def test_a_benchmark_interrupted_is_one_line_and_status_130(capsys):
    def main():
        print('{"row": 1}')          # a finished result, printed before the interrupt
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exit_:
        run_command(main, "python -m benchmarks.x")
    assert exit_.value.code == 130
    out, err = capsys.readouterr()
    assert out == '{"row": 1}\n' and err == "python -m benchmarks.x: interrupted\n"


def test_a_benchmark_exits_with_the_status_its_main_returns():
    for status, code in ((1, 1), ([{"row": 1}], 0), (None, 0)):
        with pytest.raises(SystemExit) as exit_:
            run_command(lambda status=status: status, "python -m benchmarks.x")
        assert exit_.value.code == code


class _Dropped:
    """Ctrl-C landing in a finalizer (as in JAX's garbage-collector callback): Python
    prints "Exception ignored" and drops it."""

    def __del__(self):
        raise KeyboardInterrupt


def test_an_interrupt_python_would_drop_still_stops_the_program():
    hook = sys.unraisablehook
    try:
        keep_interrupts()
        with pytest.raises(KeyboardInterrupt):
            _Dropped()                 # finalized at once: the interrupt is raised again
            time.sleep(10)             # ... a moment later
    finally:
        sys.unraisablehook = hook
