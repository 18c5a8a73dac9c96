"""The command lines' shared behaviour (``accel.args``): one-line argument errors, and
Ctrl-C as one line and exit status 130, even where Python would drop the interrupt."""

import signal
import sys
import time

import pytest

from accel import args
from accel.args import keep_interrupts, run_command
from accel.cli import main


def test_a_bad_argument_is_one_line_without_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "spec.toml", "-o", "out", "--workers", "many"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == \
        "accel sweep: error: argument --workers: invalid int value: 'many'\n"


@pytest.mark.parametrize(("option", "message"), [
    (["--workers", "0"], "argument --workers: must be at least 1, not 0"),
    (["--scheduler", "bogus"], "argument --scheduler: 'bogus' is not a scheduler address"),
    (["--scheduler", "tcp://h:0"], "argument --scheduler: 'tcp://h:0' is not a scheduler"),
])
def test_sweep_options_are_checked_before_the_sweep_starts(capsys, tmp_path, option,
                                                           message):
    """Once printed a line and created the folder before the refusal."""
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "sweeps/l2_size.toml", "-o", str(tmp_path / "out"), *option])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"accel sweep: error: {message}")
    assert not (tmp_path / "out").exists()


def test_a_benchmark_interrupted_is_one_line_and_status_130(capsys, monkeypatch):
    exits = []
    monkeypatch.setattr(args, "_hard_exit", exits.append)    # (os._exit: this is pytest)

    def main():
        print('{"row": 1}')          # a finished result, printed before the interrupt
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_command(main, "python -m benchmarks.x")
    assert exits == [130]
    out, err = capsys.readouterr()
    assert out == '{"row": 1}\n' and err == "python -m benchmarks.x: interrupted\n"


def test_a_benchmark_refuses_a_bad_value_in_one_line(capsys):
    from arch.hardware import load_hardware

    with pytest.raises(SystemExit) as exit_:
        run_command(lambda: load_hardware("edge-3x3"), "python -m benchmarks.x")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m benchmarks.x: error: ") and err.count("\n") == 1
    assert "edge-3x3" in err
    with pytest.raises(ZeroDivisionError):        # a bug is not a user error: a traceback
        run_command(lambda: 1 / 0, "python -m benchmarks.x")


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
    # Ctrl-C as a terminal delivers it: a suite started in the background of a script
    # inherits SIGINT ignored (or blocked), and Python keeps it so
    hook = sys.unraisablehook
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        keep_interrupts()
        with pytest.raises(KeyboardInterrupt):
            _Dropped()                 # finalized at once: the interrupt is raised again
            time.sleep(10)             # ... a moment later
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
