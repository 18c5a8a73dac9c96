"""Sweep speed on the fast path: N random design points on the local cores.

    python -m benchmarks.sweep_speed                 # 1,000 points (the target: < 60 s)
    python -m benchmarks.sweep_speed --points 100

The spec samples model, L2 size, node, device count, prefetch and two workloads (LISO
1024/128, SILO 128/1024) on edge-16x16 at random; the logic statistics are synthesised
(or read from the cache) before the clock starts. Points differing only in node (or, on
one device, in link) share one run of the fast path, so the output also gives how many
performance evaluations the points took, the CPU seconds the sweep's processes used
(steadier than the wall clock on a shared machine), and the seconds ``accel report``
then takes to check the rows and draw the figures (``report_seconds``, not part of the
target).
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path

from accel.args import ArgumentParser, run_command

SPEC = """[sweep]
sampling = "random"
samples = {points}
seed = 1

[fixed]
hw = "edge-16x16"

[workloads]
liso = {{ prompt = 1024, output = 128 }}
silo = {{ prompt = 128, output = 1024 }}

[axes]
model = ["sheared-llama-1.3b", "llama-3.2-1b", "tinyllama-1.1b", "qwen2.5-0.5b"]
l2_bytes = {{ geometric = [262144, 134217728], factor = 2 }}
node = ["28nm", "16nm", "7nm"]
devices = [1, 2]
link_gbytes_per_s = [8.0, 16.0]
prefetch = [true, false]
workload = ["liso", "silo"]
"""


def _cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its finished workers."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from sweeps.cost import logic_stats
    from sweeps.report import write_report
    from sweeps.runner import _logic_configs, groups, run_sweep
    from sweeps.spec import load_spec

    parser = ArgumentParser(prog="python -m benchmarks.sweep_speed",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if args.points < 1:
        parser.error(f"--points must be at least 1, not {args.points}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.toml"
        path.write_text(SPEC.format(points=1))
        grid = len(load_spec(path).grid())
        if args.points > grid:
            parser.error(f"--points {args.points:,} is more than the spec's grid of {grid:,} "
                         f"points")
        path.write_text(SPEC.format(points=args.points))
        spec = load_spec(path)
        evaluations = len(groups(spec.points()))
        # before the clock: Yosys for each configuration not yet cached (about a minute on
        # a fresh clone), with the runner's progress bar on stderr
        for hw in tqdm(_logic_configs(spec.points()), desc="logic statistics (Yosys, cached)"):
            logic_stats(hw)
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        summary = run_sweep(spec, Path(tmp) / "out", workers=args.workers, progress=False)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        t0 = time.perf_counter()
        write_report(Path(tmp) / "out")
        report_seconds = time.perf_counter() - t0
    result = {"benchmark": "sweep_speed", "points": summary["ran"],
              "performance_evaluations": evaluations,
              "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
              "points_per_second": round(summary["ran"] / seconds, 2),
              "target": "1,000 points in 60 s", "report_seconds": round(report_seconds, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.sweep_speed")
