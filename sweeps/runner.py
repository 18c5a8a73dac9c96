"""The sweep runner: every design point of a spec through the fast path and the cost
model, in parallel, resumable.

Contract
--------
``run_sweep(spec, out, scheduler=None, workers=None)`` evaluates the spec's points
(``evaluate_group``: ``sweeps.analytic.workload`` for performance, once per group of
points that differ only in their technology node, or in the link of a single device;
``sweeps.cost`` for area and cost, per point) on the local cores (a process pool) or,
with ``scheduler="tcp://host:port"``, on a Dask distributed cluster (``workers``: the
local processes, at most one per bundle of points planned alike; not with a
scheduler). ``out`` is a new or empty folder, or one a sweep wrote (it has
``sweep.json``); anything else is refused (``SweepError``). Each finished
point is appended at once to ``out/results.jsonl`` and ``out/results.csv``; a point
whose key is already in ``results.jsonl`` is skipped, so a sweep stopped halfway resumes
where it was and loses nothing. The logic statistics a point's cost needs (one Yosys
run per distinct logic configuration, cached) are computed before the points, with
progress shown.

Tested by tests/sweeps/test_sweeps.py.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import queue
import signal
from pathlib import Path

from tqdm import tqdm

from arch.hardware import HardwareConfig
from arch.kernels import sources_hash
from compiler.ir import CompileError
from models.config import preset
from models.integer import weight_bytes
from sweeps import analytic
from sweeps.cost import cost, dram_capacity_gbytes, logic_stats
from sweeps.spec import Spec, point_hardware

ROOT = Path(__file__).resolve().parents[1]


class SweepError(ValueError):
    """An output folder that holds results of other content."""


@functools.cache
def code_version() -> str:
    """A hash of the sources a point's numbers come from: the architecture, the
    compiler, the RTL (its synthesis gives the logic area), the model configurations and
    the integer model the compiler lowers (the fast path times the compiler's plan), and
    the fast path and cost model."""
    return sources_hash(
        [*ROOT.glob("arch/*.py"), *ROOT.glob("compiler/*.py"), *ROOT.glob("rtl/*.py"),
         *ROOT.glob("rtl/verilog/*"),
         *(ROOT / "models" / name for name in ("config.py", "integer.py", "numerics.py")),
         *(ROOT / "sweeps" / name for name in ("analytic.py", "perf.py", "cost.py"))])


def point_content(point: dict, workloads: dict[str, dict], code: str | None = None) -> dict:
    """Everything a point's result depends on (see the contract); ``code``: the
    toolkit's version it ran under (``code_version()``, this one's by default)."""
    hw = dataclasses.asdict(point_hardware(point))
    hw.pop("name")
    return {"hardware": hw, "model": preset(point["model"]).to_hf_dict(),
            "workload": workloads[point["workload"]], "node": point["node"],
            "devices": point["devices"], "prefetch": point["prefetch"],
            "weights": point["weights"], "batch": point["batch"],
            "kv": [point["kv_format"], point["kv_bits"]],
            "link": [point["link_gbytes_per_s"], point["link_latency_us"]],
            "code": code or code_version()}


def point_key(point: dict, workloads: dict[str, dict], code: str | None = None) -> str:
    """A point's key: a hash of its ``point_content``."""
    content = json.dumps(point_content(point, workloads, code), sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def performance_key(point: dict) -> tuple:
    """What a point's performance depends on: its hardware, model, workload, prefetch,
    weight format, batch, KV cache, devices and (with more than one device) link, but not
    its technology node."""
    link = (point["link_gbytes_per_s"], point["link_latency_us"]) if point["devices"] > 1 \
        else None
    return (point_hardware(point), point["model"], point["workload"], point["prefetch"],
            point["weights"], point["batch"], point["devices"], link, kv_bits(point))


def plan_key(point: dict) -> tuple:
    """What the fast path's plans of a point's steps depend on: its ``performance_key``
    but for prefetch and the link (``analytic._plan``: they change only how the plan is
    timed). A worker given the groups of one plan key in turn plans their steps once."""
    return (point_hardware(point).replace(prefetch=True), point["model"], point["workload"],
            point["weights"], point["batch"], point["devices"], kv_bits(point))


def kv_bits(point: dict) -> float | None:
    """The point's compressed KV budget (``analytic.decode_step``'s ``kv_bits``), None for
    the int8 cache."""
    return float(point["kv_bits"]) if point["kv_format"] == "chunked" else None


def evaluate_group(points: list[dict], workloads: dict[str, dict],
                   keys: list[str] | None = None, hw: HardwareConfig | None = None
                   ) -> list[dict]:
    """Design points of one ``performance_key``: the fast path runs once, the cost model
    once per point. One flat dict per point. A configuration the compiler could not map
    (its L2 cannot hold the activations, or its DRAM the image) is recorded as
    ``feasible: false`` with the reason. ``run_sweep`` passes the points' ``keys`` and
    resolved hardware ``hw`` (resolved once, before any point runs, so that a hardware
    file edited during a sweep changes nothing); without them they are computed here."""
    point = points[0]
    hw = hw or point_hardware(point)
    keys = keys or [point_key(p, workloads) for p in points]
    cfg = preset(point["model"])
    w = workloads[point["workload"]]
    devices = point["devices"]
    link = analytic.Link(point["link_gbytes_per_s"], point["link_latency_us"])
    try:
        est = analytic.workload(cfg, hw, w["prompt"], w["output"], point["prefetch"],
                                devices, link, weights=point["weights"], batch=point["batch"],
                                kv_bits=kv_bits(point))
    except CompileError as e:
        return [{"key": k, **p, "l2_bytes": hw.l2_bytes, "feasible": False,
                 "reason": str(e)} for p, k in zip(points, keys, strict=True)]
    # of the output - 1 decode steps, the one ``decode_total`` timed nearest the middle;
    # a workload of one output token runs none: the step that would give a second token
    # (docs/cost.md says so)
    middle = w["prompt"] + (w["output"] - 1) // 2
    timed = analytic.decode_positions(w["prompt"], w["prompt"] + w["output"] - 2,
                                      analytic.DECODE_SAMPLES, hw.kv_block_tokens)
    mid = analytic.decode_step(cfg, hw, min(timed, key=lambda x: abs(x - middle), default=middle),
                               point["prefetch"], devices, link, point["weights"],
                               point["batch"], kv_bits(point))
    tokens_per_s = est.tokens_per_s(hw)
    dram_gbytes = device_dram_gbytes(cfg, point, hw)
    rows = []
    for p, k in zip(points, keys, strict=True):
        c = cost(hw, p["node"], dram_gbytes)
        rows.append({
            "key": k, **p, "l2_bytes": hw.l2_bytes, "feasible": True,
            "reason": "", "array": f"{hw.array_rows}x{hw.array_cols}", "prompt": w["prompt"],
            "output": w["output"], "tokens_per_s": tokens_per_s,
            "ttft_s": est.ttft_s(hw), "tpot_s": est.tpot_s(hw),
            "prefill_cycles": est.prefill_cycles, "decode_cycles": est.decode_cycles,
            "dram_read_bytes": est.dram_read_bytes,
            "decode_step_cycles": mid.cycles, "decode_load_busy": mid.load_busy,
            "decode_dram_read_bytes": mid.dram_read_bytes,
            "decode_kv_read_bytes": mid.kv_read_bytes,
            "decode_compute_busy": mid.compute_busy,
            "decode_roofline_tokens_per_s": decode_roofline_tokens_per_s(mid, hw,
                                                                          point["batch"]),
            **c.as_dict(),
            "tokens_per_s_per_mm2": tokens_per_s / (devices * c.area.total_mm2),
            "tokens_per_s_per_dollar": tokens_per_s / (devices * c.total_dollars),
        })
    return rows


def device_dram_gbytes(cfg, point: dict, hw: HardwareConfig) -> float:
    """The DRAM a device of ``point`` carries (``sweeps.cost.dram_capacity_gbytes``): its
    share of the weights (``point["weights"]``) and of the KV cache of ``batch`` sequences
    at the model's whole context, a compressed cache's blocks with a header byte a
    channel (``kv_block_tokens`` of ``hw``)."""
    devices = point["devices"]
    kv_bytes = point["batch"] * cfg.kv_dim * 2 * cfg.n_layers * cfg.max_seq_len // devices
    if kv_bits(point) is not None:       # a compressed block stays in its int8 block, plus
        kv_bytes += kv_bytes // hw.kv_block_tokens    # a header byte a channel
    return dram_capacity_gbytes(weight_bytes(cfg, point["weights"]) // devices + kv_bytes)


def decode_roofline_tokens_per_s(step: analytic.StepEstimate, hw: HardwareConfig,
                                 batch: int = 1) -> float:
    """The tokens a second (``batch`` a step) that the roofline allows a decode step
    moving ``step.dram_read_bytes`` (the weights read once for the batch, the KV cache,
    the activations) and doing ``step.macs``: the step takes at least the bytes over
    ``hw.dram_bytes_per_cycle`` and the MACs over the array's PEs (``array_rows x
    array_cols`` a cycle), whichever is longer (Williams et al., "Roofline", CACM 2009).
    On edge-16x16 a 1B-class decode step is bound by the DRAM; on edge-4x4, by the
    array."""
    cycles = max(step.dram_read_bytes / hw.dram_bytes_per_cycle,
                 step.macs / (hw.array_rows * hw.array_cols), 1.0)
    return batch * hw.clock_hz / cycles


def groups(points: list[dict]) -> list[list[dict]]:
    """The points grouped by ``performance_key``, in first-appearance order."""
    by_key: dict[tuple, list[dict]] = {}
    for p in points:
        by_key.setdefault(performance_key(p), []).append(p)
    return list(by_key.values())


def _logic_configs(points: list[dict]) -> list[HardwareConfig]:
    seen, out = set(), []
    for p in points:
        hw = point_hardware(p)
        key = (hw.array_rows, hw.array_cols, hw.vector_lanes, hw.l2_banks, hw.l2_port_bytes,
               hw.dram_bytes_per_cycle, hw.dram_latency_cycles, hw.kv_block_tokens,
               hw.token_counter_bits)
        if key not in seen:
            seen.add(key)
            out.append(hw)
    return out


def read_results(path: Path) -> list[tuple[int, object]]:
    """``(line number, value)`` of each line of a ``results.jsonl``. A last line without
    its newline is a write cut short by a kill (even where its JSON is whole) and is left
    out: that point runs again, ``_Writer`` cutting the line off when the sweep resumes.
    ``SweepError`` naming the file and line for any other line that is not JSON: the
    runner writes each row whole, its newline last, so such a line was edited, and the
    point it held would silently count as not run."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")[:-1]       # (rows hold U+2028 and the like: not str.splitlines)
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append((number, json.loads(line.rstrip("\r"))))
        except json.JSONDecodeError as e:
            raise SweepError(f"{path}:{number}: not a JSON line ({e.msg}); a sweep writes "
                             f"whole lines, so it was edited: remove or fix it") from None
    return out


def finished_keys(out: Path, points: set[str] = frozenset(),
                  workloads: dict | None = None) -> set[str]:
    """The keys of the points ``out/results.jsonl`` holds. ``SweepError`` naming the file
    and line for a row that is not a point (``sweeps.report.check_row``), and for a row of
    one of ``points`` (the keys of the spec being run, whose ``workloads`` these are)
    whose values no sweep writes: edited
    by hand, it would count as finished and leave the report refusing the folder. (Rows of
    other points are refused whole by the caller; their hardware file may have changed.)"""
    from sweeps.report import ReportError, check_rows

    path = out / "results.jsonl"
    if not path.exists():
        return set()
    lines = read_results(path)
    try:
        check_rows(path, lines, points, code_version(), workloads)
    except ReportError as e:
        advice = "" if "--fresh" in str(e) else "; remove or fix it, or rerun with --fresh"
        raise SweepError(f"{e}{advice}") from None
    return {row["key"] for _, row in lines}


def _drop_partial_line(path: Path) -> None:
    """A run killed mid-write leaves a line without its newline: cut it off (that point
    is not in the finished set and runs again)."""
    if not path.exists():
        return
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        path.write_bytes(raw[:raw.rfind(b"\n") + 1])


class _Writer:
    """Appends rows to results.jsonl and results.csv, flushed after every row."""

    def __init__(self, out: Path):
        _drop_partial_line(out / "results.jsonl")
        self.jsonl = (out / "results.jsonl").open("a")
        # results.jsonl is the record; the CSV is rewritten from it, so a kill between
        # the two writes leaves them consistent on the next run.
        rows = [row for _, row in read_results(out / "results.jsonl")
                if isinstance(row, dict)]
        self.csv = (out / "results.csv").open("w", newline="")
        self.header: list[str] = []
        self.rows: list[dict] = []
        for row in rows:
            self.write_csv(row)

    def write(self, row: dict) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        self.write_csv(row)

    def write_csv(self, row: dict) -> None:
        """A row of the CSV; a row with columns the header lacks (a feasible point after
        infeasible ones, which have no metrics) rewrites the file under the union."""
        self.rows.append(row)
        new = [k for k in row if k not in self.header]
        if new:
            self.header += new
            self.csv.seek(0)
            self.csv.truncate()
            csv.writer(self.csv).writerow(self.header)
            csv.writer(self.csv).writerows([r.get(k, "") for k in self.header]
                                           for r in self.rows)
        else:
            csv.writer(self.csv).writerow([row.get(k, "") for k in self.header])
        self.csv.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.csv.close()


def run_sweep(spec: Spec, out: str | Path, scheduler: str | None = None,
              workers: int | None = None, progress: bool = True, fresh: bool = False,
              on_start=None) -> dict:
    """Run ``spec`` into ``out`` (see the contract); ``{"points", "skipped", "ran"}``.
    Raises ``SweepError`` if ``out`` holds results of other content and not ``fresh``.
    ``on_start(points)`` is called once ``out`` is accepted, before anything is written
    to it (the command line announces the sweep there, not before a refusal)."""
    if not str(out):
        raise SweepError("the output folder is an empty path (give -o FOLDER)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"{out}: not a folder (the sweep's output folder)")
    if (out / "sweep.json").exists() and not (out / "sweep.json").is_file():
        raise SweepError(f"{out / 'sweep.json'}: not a file (the sweep's record); remove it, "
                         f"or give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "sweep.json").is_file():
        raise SweepError(f"{out}: is not empty and not a sweep's output folder (it has no "
                         f"sweep.json); give a new or empty folder")
    if workers is not None and workers < 1:
        raise SweepError(f"--workers must be at least 1, not {workers}")
    if workers is not None and scheduler:
        raise SweepError("--workers sets the local processes; with --scheduler the "
                         "cluster's workers run the points (give one of the two)")
    # connected before the folder is made: a scheduler nobody answers at leaves nothing
    client = _connect(scheduler) if scheduler else None
    try:
        return _sweep(spec, out, client, workers, progress, fresh, on_start)
    finally:
        if client is not None:
            client.close()


def _connect(scheduler: str):
    """A Dask client of the scheduler at ``scheduler``; ``SweepError`` naming it where
    none answers (after Dask's connect timeout, ``distributed.comm.timeouts.connect``)."""
    from distributed import Client

    try:
        return Client(scheduler)
    # (Dask raises TypeError or ValueError for a protocol it cannot open: tls without its
    # certificates, ucx without its package, an unknown scheme)
    except (OSError, TimeoutError, TypeError, ValueError) as e:
        raise SweepError(f"--scheduler {scheduler}: cannot connect ({e})") from None


def _sweep(spec: Spec, out: Path, client, workers: int | None, progress: bool, fresh: bool,
           on_start) -> dict:
    """``run_sweep`` once its arguments are checked (and its scheduler connected)."""
    out.mkdir(parents=True, exist_ok=True)
    points = spec.points()
    keys = [point_key(p, spec.workloads) for p in points]
    if fresh:
        for name in ("results.jsonl", "results.csv"):
            (out / name).unlink(missing_ok=True)
    done = finished_keys(out, set(keys), spec.workloads)
    other = done - set(keys)
    if other:
        try:
            before = json.loads((out / "sweep.json").read_text()).get("code_version")
        except (OSError, ValueError, AttributeError):
            before = None
        why = (f"the toolkit's code changed since they ran: version {before}, now "
               f"{code_version()}" if before and before != code_version() else
               "a changed spec, workload or hardware file")
        raise SweepError(f"{out}: holds {len(other)} results of other content ({why}); "
                         f"rerun with --fresh to discard them, or write to another folder")
    if on_start is not None:
        on_start(len(points))
    todo = [p for p, k in zip(points, keys, strict=True) if k not in done]
    key_of = {id(p): k for p, k in zip(points, keys, strict=True)}
    work = [(g, spec.workloads, [key_of[id(p)] for p in g], point_hardware(g[0]))
            for g in groups(todo)]
    (out / "spec.toml").write_text(spec.path.read_text())
    (out / "sweep.json").write_text(json.dumps({"spec": str(spec.path),
                                                "code_version": code_version(),
                                                "workloads": spec.workloads,
                                                "keys": keys}) + "\n")
    configs = _logic_configs(todo)
    for hw in tqdm(configs, desc="logic statistics (Yosys, cached)", disable=not progress):
        logic_stats(hw)
    writer = _Writer(out)
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc="design points",
               disable=not progress)
    try:
        if client is not None:
            _run_dask(work, client, writer, bar)
        else:
            _run_local(work, workers, writer, bar)
    finally:
        bar.close()
        writer.close()
    return {"points": len(points), "skipped": len(points) - len(todo), "ran": len(todo)}


def _record(rows: list[dict], writer: _Writer, bar) -> None:
    for row in rows:
        writer.write(row)
    bar.update(len(rows))


_finished = None           # a worker's queue of finished groups' rows (``_run_local``)
_claimed = None            # which bundles a worker has taken (shared, ``_run_local``)
_bundles_of = None         # the bundles, in ``_affine`` order


def _start_worker(finished, claimed, bundles) -> None:
    global _finished, _claimed, _bundles_of
    _finished, _claimed, _bundles_of = finished, claimed, bundles
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _bundles(work: list) -> list[list]:
    """The work's groups by ``plan_key``, in first-appearance order."""
    by_key: dict[tuple, list] = {}
    for args in work:
        by_key.setdefault(plan_key(args[0][0]), []).append(args)
    return list(by_key.values())


def _affine(bundles: list[list]) -> list[list]:
    """The bundles with those of one model (and weights, batch, devices, KV cache and
    hardware but for the L2's size) next to each other, in first-appearance order: they
    lower the same graphs and share the fast path's cached tiles (``analytic._core``) and
    the instructions' timings, so a worker that takes them in turn computes each once."""
    by_model: dict[tuple, list] = {}
    for bundle in bundles:
        hw, *rest = plan_key(bundle[0][0][0])
        by_model.setdefault((analytic._core(hw), *rest), []).append(bundle)
    return [b for same in by_model.values() for b in same]


def _claim(worker: int, workers: int) -> int | None:
    """The next bundle for ``worker`` of ``workers``: the first not taken in its own
    contiguous share of ``_bundles_of``, else the last not taken in the share with the
    most left (so that workers finish together, each on the bundles like its own);
    None when every bundle is taken."""
    n = len(_claimed)
    shares = [range(n * w // workers, n * (w + 1) // workers) for w in range(workers)]
    with _claimed.get_lock():
        own = next((i for i in shares[worker] if not _claimed[i]), None)
        if own is None:
            left = [[i for i in share if not _claimed[i]] for share in shares]
            most = max(left, key=len)
            own = most[-1] if most else None
        if own is not None:
            _claimed[own] = 1
        return own


def _work_through(worker: int, workers: int) -> None:
    while (i := _claim(worker, workers)) is not None:
        for args in _bundles_of[i]:
            _finished.put(evaluate_group(*args))


def _run_local(work, workers, writer, bar) -> None:
    """The groups on ``workers`` processes, those of one ``plan_key`` on one process in
    turn (so that it plans their steps once), each worker taking the bundles of one
    model and hardware in turn (``_affine``, ``_claim``), each group's rows recorded as
    it finishes."""
    bundles = _affine(_bundles(work))
    # no more processes than bundles to give them (each takes a bundle at a time)
    workers = min(workers or os.cpu_count() or 1, len(bundles))
    if workers <= 1:
        for args in work:
            _record(evaluate_group(*args), writer, bar)
        return
    # Spawned, not forked: the caller may have JAX's threads running (``accel demo``), and
    # a fork of a multithreaded process can deadlock. The workers ignore Ctrl-C; the
    # parent terminates them when it is interrupted, so it stops at once.
    context = multiprocessing.get_context("spawn")
    finished = context.Queue()
    claimed = context.Array("b", len(bundles))
    pool = context.Pool(workers, initializer=_start_worker,
                        initargs=(finished, claimed, bundles))
    try:
        loops = [pool.apply_async(_work_through, (w, workers)) for w in range(workers)]
        left = len(work)
        while left:
            try:
                rows = finished.get(timeout=0.2)
            except queue.Empty:
                for loop in loops:
                    if loop.ready():
                        loop.get()          # a worker's exception, raised here
                continue
            _record(rows, writer, bar)
            left -= 1
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _run_dask(work, client, writer, bar) -> None:
    from distributed import as_completed

    futures = [client.submit(evaluate_group, *args, pure=False) for args in work]
    try:
        for f in as_completed(futures):
            _record(f.result(), writer, bar)
    finally:
        client.cancel(futures)
