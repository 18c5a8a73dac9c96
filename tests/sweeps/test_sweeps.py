"""Sweeps end to end: spec validation, the cost model's arithmetic, a real sweep (fast
path + Yosys statistics) that resumes after a kill, the same sweep on a local Dask
cluster, and the report opened in a headless browser."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from arch.hardware import load_hardware
from sweeps import cost as C
from sweeps.report import FIGURES, _order, _spec_summary, matmul_intensity, write_report
from sweeps.runner import finished_keys, point_key, run_sweep
from sweeps.spec import SpecError, load_spec

SPEC = """[sweep]
sampling = "grid"

[fixed]
hw = "edge-4x4"
model = "qwen2.5-0.5b"
node = "16nm"
vector_lanes = 1

[workloads]
short = { prompt = 32, output = 8 }

[axes]
l2_bytes = { geometric = [1048576, 4194304], factor = 2 }
prefetch = [true, false]
workload = ["short"]
"""


def write(tmp_path, text, name="spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("edit", "line", "message"), [
    (("l2_bytes = {", "l2_byts = {"), 14, "unknown axis 'l2_byts'"),
    (("factor = 2 }", "factor = 2 }\ndevices = []"), 15, "axis devices: the axis is empty"),
    (('model = "qwen2.5-0.5b"', 'model = "gpt-17"'), 6, "unknown model 'gpt-17'"),
    (('node = "16nm"', 'node = "3nm"'), 7, "unknown node '3nm'"),
    (('node = "16nm"', 'node = "16nm"\nweights = "int4"'), 8,
     "unknown weight format 'int4' (known: int8, mxint4)"),
    (('model = "qwen2.5-0.5b"', 'model = "llama-3-8b"\nweights = "mxint4"'), 7,
     "down_proj.weight: reduction length 14336 exceeds 8192"),
    (('workload = ["short"]', 'workload = ["long"]'), 16, "unknown workload 'long'"),
    (("[sweep]", "[swep]"), 1, "unknown section [swep]"),
    (("factor = 2 }", "factor = 2 }\nflash_bytes_per_s = [1000000000]"), 15,
     "flash_bytes_per_s is read only by the context-switch model"),
    (('node = "16nm"', 'node = "16nm"\nflash_latency_ns = 5'), 8,
     "flash_latency_ns is read only by the context-switch model"),
    (("factor = 2 }", "factor = 2 }\narray_rows = [3]"), 15, "must be a power of two"),
    (("factor = 2 }", "factor = 2 }\nlink_gbytes_per_s = [0.0]"), 15,
     "link_gbytes_per_s: link gbytes_per_s must be a positive number, not 0.0"),
    (("prefetch = [true, false]", "prefetch = [true, true]"), 15, "the value True appears twice"),
    (('node = "16nm"', 'node = "16nm"\nprefetch = true'), 16,
     "prefetch is both fixed and an axis"),
    (("factor = 2 }", "factor = 2 }\nclock_hz = { range = [1, 100000000000, 1] }"), 15,
     "100,000,000,000 values (a sweep takes at most 100,000 points)"),
    # a workload defined and never run (the default liso ran unsaid)
    (('workload = ["short"]', ''), 11,
     "workload 'short' is defined but no point runs it (the points run 'liso')"),
    # points that cannot run: found before any runs
    (("factor = 2 }", "factor = 2 }\ndevices = [1, 4]"), 15,
     "n_kv_heads = 2 does not split over 4 devices"),
    (("factor = 2 }", "factor = 2 }\nkv_format = [\"int4\"]"), 15,
     "unknown KV format 'int4' (known: int8, chunked)"),
    (('node = "16nm"', 'node = "16nm"\nkv_format = "chunked"\nkv_bits = 9'), 9,
     "kv_bits: a KV budget is 2 to 8 bits per cached element, not 9"),
    (("factor = 2 }", "factor = 2 }\nkv_bits = [4.0]"), 15,
     "kv_bits = 4.0 is a compressed cache's budget; the int8 cache (kv_format = 'int8') "
     "stores 8 (give kv_format = 'chunked', or make kv_format an axis)"),
    (("short = { prompt = 32, output = 8 }", "short = { prompt = 40000, output = 8 }"), 16,
     "workload 'short' (40000 + 8 tokens) is longer than qwen2.5-0.5b's context"),
    # the spec's own structure: tables where tables belong, [sweep]'s keys and types
    (('sampling = "grid"', 'sampling = "grid"\nsampels = 3'), 3,
     "unknown key 'sampels' in [sweep] (known: sampling, samples, seed)"),
    (('sampling = "grid"', 'sampling = "grid"\nseed = "abc"'), 3,
     "seed must be an integer >= 0, not 'abc'"),
    (('sampling = "grid"', 'sampling = "random"\nsamples = 2\nseed = -1'), 4,
     "seed must be an integer >= 0, not -1 (random.Random draws alike for -S and S)"),
    (('[sweep]\nsampling = "grid"', 'sweep = 3'), 1, "sweep must be a table ([sweep]), not 3"),
    # an axis's generator of the wrong shape or type (were TypeError tracebacks), or one
    # that would make too many values before the count was checked
    (("{ geometric = [1048576, 4194304], factor = 2 }", "{ geometric = 5 }"), 14,
     "axis l2_bytes: geometric needs [low, high], not 5"),
    (("{ geometric = [1048576, 4194304], factor = 2 }", '{ range = ["a", "b", "c"] }'), 14,
     "axis l2_bytes: range needs [start, stop, step], integers, not ['a', 'b', 'c']"),
    (("factor = 2 }", 'factor = "x" }'), 14,
     "geometric needs positive integer bounds and a finite factor above 1"),
    (("factor = 2 }", "factor = inf }"), 14,
     "geometric needs positive integer bounds and a finite factor above 1"),
    # an axis as a table of its own: named at its table, not at line 1
    (('l2_bytes = { geometric = [1048576, 4194304], factor = 2 }\nprefetch = [true, false]\n'
      'workload = ["short"]\n', 'prefetch = [true, false]\nworkload = ["short"]\n\n'
      '[axes.l2_bytes]\ngeometric = 5\n'), 17,
     "axis l2_bytes: geometric needs [low, high], not 5"),
    (("[1048576, 4194304], factor = 2 }", "[1, 4611686018427387904], factor = 1.0000001 }"),
     14, "axis l2_bytes: more than 100,000 values"),
    (("[1048576, 4194304], factor = 2 }", "[1048576, 4194304], factor = 2 }\n"
      "clock_hz = { range = [0, 9223372036854775807, 1] }"), 15,
     "axis clock_hz: 9,223,372,036,854,775,808 values (a sweep takes at most 100,000"),
    # a link no interconnect has: failed mid-sweep (inf) or overflowed a step's cycles
    (("factor = 2 }", "factor = 2 }\nlink_latency_us = [inf]"), 15,
     "link_latency_us: link latency_us must be a non-negative number, not inf"),
    (("factor = 2 }", "factor = 2 }\nlink_gbytes_per_s = [1e-300]"), 15,
     "link_gbytes_per_s: link gbytes_per_s must be at least 0.001 (1 MB/s), not 1e-300"),
    # a type the grid ignored or a bool taken as 1
    (('sampling = "grid"', 'sampling = "grid"\nsamples = "x"'), 3,
     "samples must be an integer N >= 1, not 'x'"),
    # a sampling setting of a grid: ignored
    (('sampling = "grid"', 'sampling = "grid"\nsamples = 3'), 3,
     "samples is for sampling = \"random\": a grid runs every point"),
    # more samples than points: ran the grid unannounced
    (('sampling = "grid"', 'sampling = "random"\nsamples = 7'), 3,
     "samples = 7 is more than the axes' grid of 6 points"),
    (("short = { prompt = 32, output = 8 }", "short = { prompt = true, output = 8 }"), 11,
     "workload 'short' needs prompt = N and output = N, positive integers"),
    # two workloads of one length: a point's key hashes the lengths, so the sweep wrote
    # one point twice under two names
    (('short = { prompt = 32, output = 8 }\n\n[axes]\nl2_bytes = { geometric = [1048576, '
      '4194304], factor = 2 }\nprefetch = [true, false]\nworkload = ["short"]',
      'short = { prompt = 32, output = 8 }\nsame = { prompt = 32, output = 8 }\n\n[axes]\n'
      'l2_bytes = [1048576]\nworkload = ["short", "same"]'), 12,
     "workloads 'short' and 'same' are both prompt = 32, output = 8: run one of them"),
    # nothing to sweep: an empty file, or no axis (once ran as a one-point sweep)
    (("[axes]\nl2_bytes = { geometric = [1048576, 4194304], factor = 2 }\n"
      "prefetch = [true, false]\nworkload = [\"short\"]", "[axes]"), 13,
     "no axes: a sweep needs an [axes] table with at least one axis"),
    (("workload = [\"short\"]", "workload = [\"short\"]\n\n[extra]\nx = 1"), 18,
     "unknown section [extra]"),
])
def test_bad_specs_fail_before_any_point_naming_the_line(tmp_path, edit, line, message):
    path = write(tmp_path, SPEC.replace(*edit))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert f"{path}:{line}:" in str(err.value) and message in str(err.value)


def test_a_geometric_axis_with_a_float_factor_holds_integers(tmp_path):
    """``factor = 1.5``: each value rounded to an integer (they were floats, an L2 of
    1572864.0 bytes refused only when its point ran)."""
    spec = load_spec(write(tmp_path, SPEC.replace("factor = 2 }", "factor = 1.5 }")))
    assert spec.axes["l2_bytes"] == [1048576, 1572864, 2359296, 3538944]
    assert all(type(v) is int for v in spec.axes["l2_bytes"])
    # a factor whose next value overflows to inf ends the axis (was an OverflowError)
    spec = load_spec(write(tmp_path, SPEC.replace("[1048576, 4194304], factor = 2 }",
                                                  "[1048576, 4194304], factor = 1e308 }")))
    assert spec.axes["l2_bytes"] == [1048576]


def test_cost_model_arithmetic():
    # The negative-binomial yield and the gross dies of a 300 mm wafer.
    assert C.die_yield(100.0, 0.1) == pytest.approx((1 + 0.1 / 3) ** -3)
    assert C.dies_per_wafer(100.0) == 640
    stats = {"gate_equivalents": 2e6, "flip_flop_bits": 0, "memory_bits": 1 << 20}
    hw = load_hardware("edge-8x8")
    areas = {n: C.area(hw, n, stats) for n in C.NODES}
    assert areas["7nm"].total_mm2 < areas["16nm"].total_mm2 < areas["28nm"].total_mm2
    assert areas["7nm"].l2_mm2 == pytest.approx(2.4 * hw.l2_bytes / 2**20)   # LLMCompass
    big = C.cost(hw.replace(l2_bytes=64 << 20), "16nm", 4, stats)
    small = C.cost(hw, "16nm", 4, stats)
    assert big.area.total_mm2 > small.area.total_mm2 and big.yield_ < small.yield_
    assert big.die_dollars > small.die_dollars and small.dram_dollars == 4 * C.DRAM_DOLLARS_PER_GB
    with pytest.raises(C.CostError, match="unknown technology node"):
        C.cost(hw, "5nm", 1, stats)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real sweep: 6 points (3 L2 sizes x prefetch), the logic of edge-4x4 with one vector
    lane from Yosys (tests/rtl/test_stats.py synthesises the same design: the cache is
    shared)."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = load_spec(write(tmp, SPEC))
    out = tmp / "out"
    summary = run_sweep(spec, out, workers=2, progress=False)
    return spec, out, summary


def test_sweep_writes_every_point_and_resumes_after_a_kill(sweep, tmp_path):
    spec, out, summary = sweep
    assert summary == {"points": 6, "skipped": 0, "ran": 6}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len({r["key"] for r in rows}) == 6
    assert all(r["feasible"] and r["tokens_per_s"] > 0 and r["area_mm2"] > 0 for r in rows)
    on = {r["l2_bytes"]: r["tokens_per_s"] for r in rows if r["prefetch"]}
    off = {r["l2_bytes"]: r["tokens_per_s"] for r in rows if not r["prefetch"]}
    assert all(on[s] > off[s] for s in on)
    # A kill while the fifth point was being written: that line is cut short.
    killed = tmp_path / "killed"
    shutil.copytree(out, killed)
    lines = (killed / "results.jsonl").read_text().splitlines()
    (killed / "results.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])
    assert len(finished_keys(killed)) == 4
    again = run_sweep(spec, killed, workers=1, progress=False)
    assert again == {"points": 6, "skipped": 4, "ran": 2}
    keys = finished_keys(killed)
    assert keys == {r["key"] for r in rows}
    assert run_sweep(spec, killed, progress=False)["ran"] == 0
    csv_rows = (killed / "results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("key,") and len(csv_rows) == 1 + 6
    # ... and one killed after the sixth row's JSON but before its newline: the row is
    # whole, but the resuming sweep cuts the line off, so it is not counted finished
    lines = (killed / "results.jsonl").read_text().splitlines()
    (killed / "results.jsonl").write_text("\n".join(lines))
    assert len(finished_keys(killed)) == 5
    assert run_sweep(spec, killed, workers=1, progress=False)["ran"] == 1
    assert finished_keys(killed) == {r["key"] for r in rows}


def test_the_weight_format_is_an_axis(tmp_path):
    """``weights`` as an axis: its points are timed apart; MXINT4 reads fewer bytes, so
    decodes faster and needs less DRAM. Its decode roofline is the array's on edge-4x4
    (16 PEs, 32 bytes a cycle): no higher than int8's, below what the DRAM would allow,
    and above what the middle decode step reaches (it counted the weights' bytes alone
    and was above the array's by up to 2x)."""
    from sweeps import runner

    text = SPEC.replace('workload = ["short"]',
                        'workload = ["short"]\nweights = ["int8", "mxint4"]')
    spec = load_spec(write(tmp_path, text))
    points = [p for p in spec.points() if p["l2_bytes"] == 2 ** 21 and p["prefetch"]]
    assert len(runner.groups(points)) == 2
    rows = {r["weights"]: r for p in points for r in runner.evaluate_group([p], spec.workloads)}
    int8, mx = rows["int8"], rows["mxint4"]
    assert mx["dram_read_bytes"] < 0.8 * int8["dram_read_bytes"]
    assert mx["tpot_s"] < int8["tpot_s"] and mx["tokens_per_s"] > int8["tokens_per_s"]
    hw = load_hardware("edge-4x4")
    assert mx["decode_roofline_tokens_per_s"] == int8["decode_roofline_tokens_per_s"]
    for row in (int8, mx):
        dram_roof = hw.dram_bytes_per_cycle * hw.clock_hz / row["decode_dram_read_bytes"]
        assert row["decode_roofline_tokens_per_s"] < 0.9 * dram_roof
        assert hw.clock_hz / row["decode_step_cycles"] <= row["decode_roofline_tokens_per_s"]
    assert mx["dram_dollars"] <= int8["dram_dollars"]


def test_the_kv_format_and_budget_are_axes(tmp_path):
    """``kv_format`` and ``kv_bits`` as axes: the int8 cache's points run once (at 8
    bits), each compressed budget apart; compressed chunks read fewer DRAM bytes a
    decode step the fewer their bits; on this device
    the decompressor, one block at a time, makes the steps slower than the int8 cache's
    (docs/serving.md)."""
    from sweeps import runner

    text = SPEC.replace('workload = ["short"]', 'workload = ["short"]\n'
                        'kv_format = ["int8", "chunked"]\nkv_bits = [8.0, 4.0, 2.0]')
    spec = load_spec(write(tmp_path, text))
    points = [p for p in spec.points() if p["l2_bytes"] == 2 ** 21 and p["prefetch"]]
    assert sorted((p["kv_format"], p["kv_bits"]) for p in points) == [
        ("chunked", 2.0), ("chunked", 4.0), ("chunked", 8.0), ("int8", 8.0)]
    assert len(runner.groups(points)) == 4
    rows = {(r["kv_format"], r["kv_bits"]): r for p in points
            for r in runner.evaluate_group([p], spec.workloads)}
    int8 = rows["int8", 8.0]
    read = [rows["chunked", b]["decode_dram_read_bytes"] for b in (8.0, 4.0, 2.0)]
    assert read[0] > read[1] > read[2] and read[2] < int8["decode_dram_read_bytes"]
    kv = [rows["chunked", b]["decode_kv_read_bytes"] for b in (8.0, 4.0, 2.0)]
    assert kv[0] > kv[1] > kv[2] > 0 and kv[2] < int8["decode_kv_read_bytes"]
    # the KV is all that differs: the rest of a step's bytes is the same in every format
    assert {r["decode_dram_read_bytes"] - r["decode_kv_read_bytes"] for r in rows.values()} \
        == {int8["decode_dram_read_bytes"] - int8["decode_kv_read_bytes"]}
    assert all(r["decode_step_cycles"] > int8["decode_step_cycles"]
               for k, r in rows.items() if k[0] == "chunked")
    assert rows["chunked", 8.0]["prefill_cycles"] == int8["prefill_cycles"]


def test_points_differing_only_in_node_share_one_performance_run(tmp_path, monkeypatch):
    from sweeps import analytic, runner

    text = SPEC.replace('node = "16nm"\n', "").replace(
        'workload = ["short"]', 'workload = ["short"]\nnode = ["28nm", "7nm"]\n'
        "link_gbytes_per_s = [8.0, 16.0]")
    spec = load_spec(write(tmp_path, text))
    points = spec.points()
    assert len(points) == 24
    # A single device: neither the node nor the link changes performance.
    assert len(runner.groups(points)) == 6
    calls = []
    real = analytic.workload
    monkeypatch.setattr(analytic, "workload", lambda *a, **k: calls.append(a) or real(*a, **k))
    run_sweep(spec, tmp_path / "out", workers=1, progress=False)
    assert len(calls) == 6
    rows = {json.loads(x)["key"]: json.loads(x)
            for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert len(rows) == 24
    for p in points[:2]:
        alone = json.loads(json.dumps(runner.evaluate_group([p], spec.workloads)[0]))
        assert rows[alone["key"]] == alone
    by_node = {(r["l2_bytes"], r["prefetch"], r["node"]): r for r in rows.values()}
    for (l2, pf, node), r in by_node.items():
        other = by_node[(l2, pf, "7nm" if node == "28nm" else "28nm")]
        assert r["tokens_per_s"] == other["tokens_per_s"]
        assert (r["area_mm2"] < other["area_mm2"]) == (node == "7nm")



def test_groups_that_share_plans_go_to_one_worker_together(tmp_path):
    """Points differing only in prefetch or (on two devices) the link are timed apart but
    planned alike: ``plan_key`` puts their groups in one bundle, which a worker runs in
    turn; points of another L2 size or device count are planned apart."""
    from sweeps.runner import _bundles, groups, plan_key

    text = SPEC.replace('workload = ["short"]', 'workload = ["short"]\ndevices = [1, 2]\n'
                        "link_gbytes_per_s = [8.0, 16.0]")
    points = load_spec(write(tmp_path, text)).points()
    work = [(g, None, None, None) for g in groups(points)]
    bundles = _bundles(work)
    # 3 L2 sizes x 2 device counts; prefetch x (on two devices) link within each
    assert len(work) == 3 * (2 + 4) and len(bundles) == 3 * 2
    for bundle in bundles:
        firsts = [args[0][0] for args in bundle]
        assert len({plan_key(p) for p in firsts}) == 1
        assert len(bundle) == (4 if firsts[0]["devices"] == 2 else 2)
    assert sorted(id(a) for b in bundles for a in b) == sorted(id(a) for a in work)

def test_workers_take_the_bundles_of_one_model_in_turn_and_finish_together(monkeypatch):
    """``_affine`` puts the bundles of one model (and hardware but for the L2) next to
    each other; ``_claim`` gives each worker its own contiguous share first, then the
    last bundle of the share with the most left, until every bundle is taken once."""
    import multiprocessing

    from sweeps import runner

    def bundle(model, l2):
        return [([{"model": model, "l2_bytes": l2}], None, None, None)]

    def key(point):
        return (load_hardware("edge-4x4").replace(l2_bytes=point["l2_bytes"]),
                point["model"])

    monkeypatch.setattr(runner, "plan_key", key)
    mixed = [bundle(m, l2) for l2 in (1 << 16, 1 << 17, 1 << 18) for m in ("a", "b", "c")]
    ordered = runner._affine(mixed)
    assert [b[0][0][0]["model"] for b in ordered] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert sorted(map(id, ordered)) == sorted(map(id, mixed))
    claimed = multiprocessing.get_context("spawn").Array("b", 9)
    monkeypatch.setattr(runner, "_claimed", claimed)
    taken = [runner._claim(0, 2), runner._claim(1, 2), runner._claim(1, 2)]
    assert taken == [0, 4, 5]                 # shares 0-3 and 4-8
    taken += [runner._claim(1, 2) for _ in range(3)]
    assert taken[3:] == [6, 7, 8]
    # worker 1's share is done: it takes from the end of worker 0's
    assert [runner._claim(1, 2), runner._claim(0, 2), runner._claim(0, 2)] == [3, 1, 2]
    assert runner._claim(0, 2) is None and runner._claim(1, 2) is None
    assert list(claimed) == [1] * 9


def test_no_more_worker_processes_than_bundles(monkeypatch):
    """Two groups planned alike are one bundle: ``--workers 64`` runs them in this
    process, in order, starting no pool."""
    from sweeps import runner

    monkeypatch.setattr(runner, "plan_key", lambda point: (load_hardware("edge-4x4"), "m"))
    monkeypatch.setattr(runner, "evaluate_group", lambda group, *rest: [group[0]])
    monkeypatch.setattr(runner.multiprocessing, "get_context",
                        lambda *a: pytest.fail("a pool was started for one bundle"))
    written = []

    class Writer:
        write = written.append

    class Bar:
        def update(self, n):
            pass

    work = [([{"n": i}], None, None, None) for i in range(2)]
    runner._run_local(work, 64, Writer(), Bar())
    assert written == [{"n": 0}, {"n": 1}]


def test_the_same_sweep_on_a_local_dask_cluster(sweep, tmp_path):
    from distributed import LocalCluster

    spec, out, _ = sweep
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        summary = run_sweep(spec, tmp_path / "dask", scheduler=cluster.scheduler_address,
                            progress=False)
    assert summary["ran"] == 6
    local = {json.loads(x)["key"]: json.loads(x)
             for x in (out / "results.jsonl").read_text().splitlines()}
    for line in (tmp_path / "dask" / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row == local[row["key"]]


def test_a_scheduler_nobody_answers_at_is_refused_before_the_folder(sweep, tmp_path):
    """``--scheduler`` with nothing listening: one ``SweepError`` naming the address, after
    Dask's connect timeout (1 s here), and no output folder (it was made, with its spec
    and record, before the sweep failed to connect)."""
    import socket

    import dask
    import distributed  # noqa: F401  (its config defaults, before dask.config.set saves them)

    from sweeps.runner import SweepError

    spec, _, _ = sweep
    with socket.socket() as s:          # a port nobody listens at: bound, never listened
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
                pytest.raises(SweepError, match=f"--scheduler {address}: cannot connect"):
            run_sweep(spec, tmp_path / "out", scheduler=address, progress=False)
    assert not (tmp_path / "out").exists()
    # a protocol Dask cannot open here (TLS without certificates) was a TypeError traceback
    with pytest.raises(SweepError, match="--scheduler tls://127.0.0.1:1: cannot connect"):
        run_sweep(spec, tmp_path / "out", scheduler="tls://127.0.0.1:1", progress=False)
    assert not (tmp_path / "out").exists()


def test_report_figures_load_in_a_headless_browser(sweep, tmp_path):
    _, out, _ = sweep
    findings = write_report(out)
    assert len(findings["optima"]) == 2 and findings["pareto"]
    # neither batch nor KV budget varied: both figures are notes, captioned as such
    assert findings["notes"] == ["batch", "kv_budget"]
    assert (out / "report.md").read_text().count("Not drawn: the sweep keeps") == 2
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 1000
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    page = (out / "report.html").read_text()
    assert all(f"src='{name}.png'" in page for name in FIGURES)
    assert "Findings" in (out / "report.md").read_text()
    # an optimum says over how many sizes it was found (a random sample may run few)
    assert re.search(r"prefetch=on: tokens/s per \$ peaks at L2 = \d+ MiB of the 3 sizes run",
                     (out / "report.md").read_text())
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("the report test needs Debian's chromium (`make test` installs it)")
    # Every <img> must have loaded (naturalWidth > 0): a script in a copy of the page
    # writes the verdict into the DOM that headless Chromium dumps.
    probe = tmp_path / "probe.html"
    shutil.copytree(out, tmp_path / "site")
    probe = tmp_path / "site" / "probe.html"
    probe.write_text(page.replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-loaded',
    imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length);
});</script></body>"""))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert f'data-loaded="{len(FIGURES)}/{len(FIGURES)}"' in dom, dom[-500:]


def test_report_draws_a_bar_per_point_and_notes_an_axis_kept_fixed(sweep, tmp_path,
                                                                   monkeypatch):
    """The time breakdown has a bar per point, labelled apart: points differing only in a
    group field (here the workload; in sweeps/batch.toml the batch) were drawn as one
    category each, the later bars over the earlier. The batch and KV-budget figures of
    a sweep that keeps those fixed are a note, not a legend of one point a line."""
    from sweeps.report import _batch_figure, _breakdown_figure, _kv_figure, load_results

    _, out, _ = sweep
    rows = load_results(out)
    other = [{**r, "workload": "long", "decode_compute_busy": r["decode_step_cycles"]}
             for r in rows]
    names = _breakdown_figure(rows + other, ["workload"], tmp_path)
    assert len(names) == len(set(names)) == 2 * len(rows)
    assert "workload=long 1 MiB pf" in names and "workload=short 1 MiB no pf" in names
    # past BREAKDOWN_BARS points, the best by tokens/s per $ (a bar each for a 1,000-point
    # sweep was a figure 350 inches wide)
    import sweeps.report

    monkeypatch.setattr(sweeps.report, "BREAKDOWN_BARS", 3)
    scored = [{**r, "tokens_per_s_per_dollar": float(i)}
              for i, r in enumerate(rows + other)]
    best = _breakdown_figure(scored, ["workload"], tmp_path)
    assert sorted(best) == sorted(
        f"workload=long {sweeps.report.size_label(r['l2_bytes'])} "
        f"{'pf' if r['prefetch'] else 'no pf'}" for r in scored[-3:])
    assert _batch_figure(rows, [], tmp_path) == 0 and _kv_figure(rows, [], tmp_path) == 0
    assert (tmp_path / "batch.png").stat().st_size > 1000
    batched = [{**r, "batch": b} for r in rows for b in (1, 4)]
    assert _batch_figure(batched, [], tmp_path) == len({(r["l2_bytes"], r["prefetch"])
                                                         for r in rows}) == 6
    # past MAX_LINES series, the lines of those whose best point has the most tokens/s
    # per $ (a 1,000-point sweep's legend was taller than the page)
    monkeypatch.setattr(sweeps.report, "MAX_LINES", 2)
    assert _batch_figure(batched, [], tmp_path) == 2
    series = sweeps.report._series(rows, ["l2_bytes", "prefetch"])
    drawn, note = sweeps.report._drawn(series)
    best = sorted(series, key=lambda k: -series[k][0]["tokens_per_s_per_dollar"])[:2]
    assert set(drawn) == set(best) and note == "the 2 best of 6 series by tokens/s per $"


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("tokens_per_s"), "the point has no 'tokens_per_s'"),
    (lambda r: r.update(l2_bytes="1 MiB"), 'l2_bytes = "1 MiB" is not a count of bytes'),
    (lambda r: r.update(prefetch=1), "prefetch = 1 is not true or false"),
    (lambda r: r.update(model=None), "model = null is not a string"),
    (lambda r: r.update(decode_step_cycles=0), "decode_step_cycles = 0 is not positive"),
    (lambda r: r.update(key=[1]), "key = [1] is not a string"),        # was a TypeError
    (lambda r: r.pop("hw"), "the point has no 'hw'"),                   # was a KeyError
    (lambda r: r.update(tokens_per_s=-5.0), "tokens_per_s = -5.0 is not positive"),
    # of the right type but no point the sweep writes (they were plotted)
    (lambda r: r.update(batch=-2), "batch = -2 is not a count of at least 1"),
    (lambda r: r.update(devices=0), "devices = 0 is not a count of at least 1"),
    (lambda r: r.update(node="3nm"), 'node = "3nm" is not a node the cost model knows'),
    (lambda r: r.update(model="gpt-17"), "model: unknown model preset 'gpt-17'"),
    (lambda r: r.update(decode_compute_busy=r["decode_step_cycles"] + 1),
     "decode_compute_busy = "),
    (lambda r: r.pop("key"), "the point has no 'key'"),              # was dropped unsaid
    (lambda r: r.update(ttft_s=-1.0), "ttft_s = -1.0 is not positive"),
    (lambda r: r.update(decode_load_busy=-1), "decode_load_busy = -1 is negative"),
    (lambda r: r.update(kv_format="chunked", kv_bits=99), "kv_bits = 99 is not a compressed"),
    # the derived rates and the area's total agree with what they derive from
    (lambda r: r.update(tokens_per_s_per_dollar=99.0),
     "tokens_per_s_per_dollar = 99.0 is not tokens_per_s / (devices x cost_dollars)"),
    (lambda r: r.update(l2_mm2=r["l2_mm2"] + 1), "l2_mm2 = "),
    # ... and the fields the sweep derives from others, each edited with the rates and
    # totals that follow from it, so that only the edited field is out of line
    (lambda r: r.update(tokens_per_s=1000.0, tokens_per_s_per_mm2=1000.0 / r["area_mm2"],
                        tokens_per_s_per_dollar=1000.0 / r["cost_dollars"]),
     "tokens_per_s = 1000.0 is not batch x output tokens over ttft_s + tpot_s"),
    (lambda r: r.update(l2_bytes=2 * r["l2_bytes"]), "l2_mm2 = "),     # not the point's size
    (lambda r: r.update(cost_dollars=1.0, tokens_per_s_per_dollar=r["tokens_per_s"]),
     "cost_dollars = 1.0 is not die_dollars + dram_dollars"),
    (lambda r: r.update(die_dollars=r["die_dollars"] / 2,
                        cost_dollars=r["die_dollars"] / 2 + r["dram_dollars"]),
     "die_dollars = "),
    (lambda r: r.update(dram_gbytes=64.0), "dram_gbytes = 64.0 is not the DRAM a device needs"),
    (lambda r: r.update(dram_dollars=1.0), "dram_dollars = 1.0 is not dram_gbytes at $3/GB"),
    # (another model's row: its DRAM is not that model's)
    (lambda r: r.update(model="llama-3-8b"), "dram_gbytes = 1.0 is not the DRAM a device"),
    # a tiny area was an OverflowError in the wafer's die count: the parts come first
    (lambda r: r.update(area_mm2=5e-324), "area_mm2 = 5e-324 is not the sum of"),
    (lambda r: r.update(decode_load_busy=10 ** 12), "decode_load_busy = 1000000000000 is "
     "more than the step's decode_step_cycles"),
    (lambda r: r.update(decode_roofline_tokens_per_s=1.0),
     "decode_roofline_tokens_per_s = 1.0 is below the rate its decode step reaches"),
    (lambda r: r.update(decode_roofline_tokens_per_s="x"),
     'decode_roofline_tokens_per_s = "x" is not a finite number'),
    (lambda r: r.update(weights="int3"), 'weights = "int3" is not one of int8, mxint4'),
    (lambda r: r.update(array="banana"), 'array = "banana" is not its hardware\'s 4x4'),
    (lambda r: r.update(link_gbytes_per_s="x"), 'link_gbytes_per_s = "x" is not a number'),
    # an infeasible row's settings are listed in the report: checked as a feasible one's
    # (a bad one was a traceback once the figures were drawn)
    (lambda r: r.update(feasible=False, reason="r", l2_bytes="x"),
     'l2_bytes = "x" is not a count of bytes'),
    (lambda r: (r.update(feasible=False, reason="r"), r.pop("l2_bytes")),
     "l2_bytes = null is not a count of bytes"),
    (lambda r: r.update(feasible=False, reason="r", prefetch="yes"),
     'prefetch = "yes" is not true or false'),
    (lambda r: r.update(feasible=False, reason="r", workload=[1]),
     "workload = [1] is not a string"),
    (lambda r: r.update(tpot_s=0.0), "tpot_s = 0.0 with output = 8"),
    (lambda r: r.update(output=1.5), "output = 1.5 is not a count of at least 1"),
    # an infeasible row says why (the report's list printed an empty reason, or None)
    (lambda r: r.update(feasible=False, reason=""),
     'an infeasible point without its reason (reason = "")'),
    (lambda r: (r.update(feasible=False), r.pop("reason")),
     "an infeasible point without its reason (reason = null)"),
])
def test_report_of_a_hand_edited_row_names_its_line(sweep, tmp_path, capsys, edit, message):
    """A feasible row of the spec's without a field the report reads, or with one of the
    wrong type (``results.jsonl`` edited by hand): ``accel report`` says which line and
    field in one line, status 2 (it was a ``KeyError`` traceback)."""
    from accel.cli import main

    _, out, _ = sweep
    folder = tmp_path / "edited"
    shutil.copytree(out, folder)
    lines = (folder / "results.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    edit(row)
    lines[2] = json.dumps(row)
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    for name in FIGURES:                      # nothing is drawn before the rows are read
        (folder / f"{name}.png").unlink(missing_ok=True)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"accel report: error: {folder / 'results.jsonl'}:3: {message}")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not any((folder / f"{name}.png").exists() for name in FIGURES)


def test_report_of_a_workload_of_one_output_token(tmp_path, capsys):
    """A workload of one output token has no decode step (TPOT 0): its sweep's report is
    drawn (the report refused its own sweep's rows: a TPOT of 0 is not positive)."""
    from accel.cli import main

    text = (SPEC.replace("short = { prompt = 32, output = 8 }",
                         "short = { prompt = 32, output = 1 }")
            .replace("l2_bytes = { geometric = [1048576, 4194304], factor = 2 }",
                     "l2_bytes = [1048576]").replace("prefetch = [true, false]",
                                                      "prefetch = [true]"))
    out = tmp_path / "out"
    assert run_sweep(load_spec(write(tmp_path, text)), out, progress=False)["ran"] == 1
    row = json.loads((out / "results.jsonl").read_text())
    assert row["tpot_s"] == 0 and row["ttft_s"] > 0 and row["output"] == 1
    assert main(["report", str(out)]) == 0, capsys.readouterr().err
    assert (out / "report.md").is_file()


def test_report_says_what_is_missing_and_gives_no_optimum_for_one_size(sweep, tmp_path,
                                                                      capsys):
    """An interrupted sweep's report counts the spec's points not run yet; rows that are
    not the spec's are counted as left out; a series with one L2 size run is not
    reported as an optimum "at the edge of the sizes run"."""
    from accel.cli import main

    _, out, _ = sweep
    folder = tmp_path / "interrupted"
    shutil.copytree(out, folder)
    rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    # one L2 size of three run; a row of another spec's
    kept = [r for r in rows if r["l2_bytes"] == 1 << 20] + [{**rows[0], "key": "0" * 16}]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    assert main(["report", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "4 of the spec's points not run yet" in printed
    assert "only L2 = 1 MiB was run" in printed and "at the edge of" not in printed
    md = (folder / "report.md").read_text()
    assert re.search(r"2 feasible design points from `[^`]*`; 4 of the spec's points not "
                     r"run yet", md)
    assert "1 rows of results.jsonl left out (not points of the spec last run)" in md
    assert "no optimum over L2" in md and "peaks at" not in md
    assert main(["report", str(out)]) == 0 and "not run yet" not in capsys.readouterr().out
    # the sizes beyond 1 MiB run but infeasible: one feasible size of three, not "run"
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    for r in rows:
        if r["l2_bytes"] > 1 << 20:
            r.update(feasible=False, reason="made infeasible here")
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "only L2 = 1 MiB of the 3 sizes run is feasible" in printed
    assert "4 infeasible points (listed in the report)" in printed
    md = (folder / "report.md").read_text()
    assert "varied: L2 1 MiB to 4 MiB" in md and "l2_bytes 2 MiB, prefetch on: made" in md
    assert "None" not in md


def test_report_refuses_a_repeated_point_and_a_line_that_is_not_one(sweep, tmp_path):
    """A point written twice (counted twice in the report), a line of JSON that is not
    an object (dropped) and a line that is not JSON before the last (a sweep writes whole
    lines and cuts a killed write off when it resumes, so its point would silently count
    as not run) are damage: named by line, by the report and by a sweep resumed into the
    folder. So is a point whose values no sweep writes: a resumed sweep counted it as
    finished (and the report then refused the folder). A last line cut short without its
    newline is what a kill leaves: skipped. A row is one line, whatever it holds
    (``str.splitlines`` split a row at a U+2028 inside a string)."""
    from sweeps.report import ReportError, load_results
    from sweeps.runner import SweepError

    spec, out, _ = sweep
    lines = (out / "results.jsonl").read_text().splitlines()
    folder = tmp_path / "edited"
    bad = json.loads(lines[2]) | {"tokens_per_s": "fast"}
    infeasible = json.loads(lines[2]) | {"feasible": False, "reason": "L2 too small"}
    for text, message, resume in [
            (lines + [lines[1]], f":{len(lines) + 1}: the point of line 2 again", False),
            (lines[:2] + ["[1, 2, 3]"] + lines[2:],
             ":3: not a point (a JSON object), but [1, 2, 3]", True),
            (lines[:2] + [json.dumps(bad)] + lines[3:],
             ':3: tokens_per_s = "fast" is not a finite number', True),
            # settings edited, the key left: the report drew a point of a workload no
            # spec has, or a prompt its row did not run
            (lines[:2] + [json.dumps(json.loads(lines[2]) | {"workload": "zzz"})] + lines[3:],
             ':3: workload = "zzz" is not one of the spec\'s (liso, silo, short)', True),
            (lines[:2] + [json.dumps(json.loads(lines[2]) | {"prompt": 999})] + lines[3:],
             ":3: prompt = 999 is not workload short's 32", True),
            (lines[:2] + [json.dumps(json.loads(lines[2]) | {"prompt": 32.0})] + lines[3:],
             ":3: prompt = 32.0 is not a count of at least 1", True),
            (lines[:2] + [json.dumps(infeasible | {"output": 16})] + lines[3:],
             ":3: output = 16 is not workload short's 8", True),
            # renamed to a workload of the spec's (a default), its lengths left
            (lines[:2] + [json.dumps(json.loads(lines[2]) | {"workload": "liso"})] + lines[3:],
             ":3: prompt = 32 is not workload liso's 1024", True),
            (lines[:2] + [json.dumps(json.loads(lines[2]) | {"prefetch": not json.loads(
                lines[2])["prefetch"]})] + lines[3:],
             ":3: its settings, workload lengths, model and hardware file are not those "
             "its key", True),
            # an infeasible row is listed in the report: its settings hash to its key too,
            # and its names are the spec's and the toolkit's
            (lines[:2] + [json.dumps(infeasible | {"l2_bytes": 3 * 2 ** 20})] + lines[3:],
             ":3: its settings, workload lengths, model and hardware file are not those "
             "its key", True),
            (lines[:2] + [json.dumps(infeasible | {"workload": "zzz"})] + lines[3:],
             ':3: workload = "zzz" is not one of the spec\'s (liso, silo, short)', True),
            (lines[:2] + [json.dumps(infeasible | {"model": "gpt-17"})] + lines[3:],
             ":3: model: unknown model preset 'gpt-17'", True),
            (lines[:2] + [json.dumps(infeasible | {"node": "3nm"})] + lines[3:],
             ':3: node = "3nm" is not a node the cost model knows', True),
            (lines[:2] + [json.dumps(infeasible | {"hw": "nowhere"})] + lines[3:],
             ":3: its hardware: ", True),
            (lines[:2] + ['{"key": "ab'] + lines[2:],
             "results.jsonl:3: not a JSON line (Unterminated string", True)]:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(out, folder)
        (folder / "results.jsonl").write_text("\n".join(text) + "\n")
        with pytest.raises(ReportError, match=re.escape(message)):
            load_results(folder)
        if resume:
            with pytest.raises(SweepError, match=re.escape(message)):
                run_sweep(spec, folder, workers=1, progress=False)
    (folder / "results.jsonl").write_text("\n".join(lines + ['{"key": "ab']))
    assert len(load_results(folder)) == len(lines)
    infeasible = json.loads(lines[0]) | {"feasible": False, "reason": "a\u2028b"}
    (folder / "results.jsonl").write_text(
        "\n".join([json.dumps(infeasible, ensure_ascii=False)] + lines[1:]) + "\n")
    assert len(finished_keys(folder)) == len(lines)
    assert run_sweep(spec, folder, workers=1, progress=False)["ran"] == 0


def test_a_rerun_of_other_content_is_refused_and_the_report_reads_only_the_spec(sweep,
                                                                                 tmp_path):
    """Same names, other content: a workload's lengths, an axis, the hardware file's
    contents. Each is refused (results kept), then run with ``fresh``."""
    from sweeps.runner import SweepError

    _, out, _ = sweep
    hw_file = tmp_path / "hw.toml"
    hw_file.write_text((Path("configs") / "edge-4x4.toml").read_text())
    # one L2 size: two points a run
    base = SPEC.replace('hw = "edge-4x4"', f'hw = "{hw_file}"').replace(
        "l2_bytes = { geometric = [1048576, 4194304], factor = 2 }", "l2_bytes = [1048576]")
    folder = tmp_path / "out"
    run_sweep(load_spec(write(tmp_path, base)), folder, workers=1, progress=False)
    kept = (folder / "results.jsonl").read_text()
    for name, text, change in [
            ("workload", base, ("prompt = 32, output = 8", "prompt = 48, output = 8")),
            ("axis", base, ("prefetch = [true, false]", "prefetch = [true]")),
            ("hardware file", None, None)]:
        if text is None:
            hw_file.write_text(hw_file.read_text().replace("clock_hz = 800000000",
                                                           "clock_hz = 600000000"))
            text = base
        else:
            text = text.replace(*change)
        spec = load_spec(write(tmp_path, text, f"{name}.toml"))
        with pytest.raises(SweepError, match=r"holds [12] results of other content \(a "
                                             r"changed spec, workload or hardware file\)"):
            run_sweep(spec, folder, workers=1, progress=False)
        assert (folder / "results.jsonl").read_text() == kept, name
    # results of another version of the toolkit: said so, with both versions
    record = json.loads((folder / "sweep.json").read_text())
    (folder / "sweep.json").write_text(json.dumps({**record, "code_version": "0123"}))
    (folder / "results.jsonl").write_text(kept.replace('"key": "', '"key": "old'))
    with pytest.raises(SweepError, match=r"the toolkit's code changed since they ran: "
                                         r"version 0123, now [0-9a-f]{16}"):
        run_sweep(load_spec(write(tmp_path, base, "same.toml")), folder, workers=1,
                  progress=False)
    (folder / "results.jsonl").write_text(kept)
    (folder / "sweep.json").write_text(json.dumps(record))
    summary = run_sweep(spec, folder, workers=1, progress=False, fresh=True)
    assert summary == {"points": 2, "skipped": 0, "ran": 2}
    # A folder of mixed rows (as older versions left them): the report takes the spec's.
    (folder / "results.jsonl").write_text(kept + (folder / "results.jsonl").read_text())
    from sweeps.report import load_results

    rows = load_results(folder)
    assert len(rows) == 2 and {r["key"] for r in rows} == finished_keys(folder) - {
        json.loads(x)["key"] for x in kept.splitlines()}


def test_ctrl_c_stops_a_sweep_at_once_and_keeps_what_finished(tmp_path):
    """Ctrl-C (SIGINT to the process group) while two workers compute: the command
    exits within 2 s; the points written stay, and a rerun skips them."""
    import os
    import signal
    import sys
    import time

    text = SPEC.replace("short = { prompt = 32, output = 8 }",
                        "short = { prompt = 1024, output = 1024 }").replace(
        'model = "qwen2.5-0.5b"', 'model = "sheared-llama-1.3b"').replace(
        "factor = 2 }", "factor = 2 }\nclock_hz = { range = [500000000, 1900000000, "
        "100000000] }")
    path = write(tmp_path, text)
    out = tmp_path / "out"
    # Ctrl-C as a terminal delivers it. A process inherits an ignored or blocked SIGINT,
    # and Python keeps it so (a suite started as `make test &` from a script ran this
    # sweep deaf to it), so the command line starts with SIGINT unblocked and the usual
    # KeyboardInterrupt handler. With the fault handler on, a process that does not stop
    # can be made to print where each of its threads is (SIGABRT).
    cli = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
           " signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT});"
           " sys.argv[0] = 'accel'; runpy.run_module('accel.cli', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", cli, "sweep", str(path), "-o", str(out),
                             "--workers", "2"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while not (results.exists() and results.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the sweep did not stop 30 s after Ctrl-C; its threads:\n{err[-6000:]}")
    assert time.monotonic() - t0 < 2.0 and proc.returncode == 130, err[-300:]
    lines = results.read_text().splitlines()
    assert 2 <= len(lines) < 90 and len(finished_keys(out)) == len(lines)


def test_an_l2_too_small_is_recorded_as_infeasible_not_an_abort(tmp_path):
    """Qwen2.5-0.5B's decode step needs 32,000 bytes of activations besides the staging
    ring (its 151,936-entry LM head in column chunks), so it cannot run in 32 KiB: that
    point is a row with the compiler's reason; the others run and the report leaves it
    out of its figures and names it with the reason."""
    from sweeps.report import ReportError, load_results, write_report

    text = SPEC.replace("l2_bytes = { geometric = [1048576, 4194304], factor = 2 }",
                        "l2_bytes = [32768, 1048576]").replace("prefetch = [true, false]",
                                                               "prefetch = [true]")
    summary = run_sweep(load_spec(write(tmp_path, text)), tmp_path / "out", workers=1,
                        progress=False)
    assert summary == {"points": 2, "skipped": 0, "ran": 2}
    rows = {json.loads(x)["l2_bytes"]: json.loads(x)
            for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()}
    assert not rows[32768]["feasible"] and "32000 bytes of activations" in rows[32768]["reason"]
    assert rows[1048576]["feasible"] and rows[1048576]["tokens_per_s"] > 0
    assert [r["l2_bytes"] for r in load_results(tmp_path / "out")] == [1048576]
    findings = write_report(tmp_path / "out")
    assert findings["points"] == 1 and [p["l2_bytes"] for p in findings["infeasible"]] == [32768]
    report = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"1 feasible design point from `[^`]*`; 1 infeasible \(below\)",
                     report)
    assert "l2_bytes 32 KiB, prefetch on: L2 too small" in report
    # a folder of infeasible points only: the report is refused, naming the reason
    only = tmp_path / "only"
    run_sweep(load_spec(write(tmp_path, text.replace("l2_bytes = [32768, 1048576]",
                                                     "l2_bytes = [32768]"))), only,
              workers=1, progress=False)
    with pytest.raises(ReportError, match=r"no finished feasible points \(1 infeasible; 1 of "
                                          r"them: L2 too small"):
        write_report(only)
    # sweep.json listing none of the rows (edited, or cut short): said so, not as if
    # every point were infeasible
    (only / "sweep.json").write_text(json.dumps({"keys": ["0" * 16]}))
    with pytest.raises(ReportError, match=r"no finished feasible points \(its 1 rows are "
                                          r"none of the 1 points sweep.json lists"):
        write_report(only)


def test_bad_folders_and_records_are_refused_by_name(sweep, tmp_path):
    from sweeps.report import ReportError, load_results
    from sweeps.runner import SweepError

    spec, out, _ = sweep
    with pytest.raises(SpecError, match="no such sweep specification .a folder."):
        load_spec(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SweepError, match="file: not a folder"):
        run_sweep(spec, tmp_path / "file", progress=False)
    with pytest.raises(SweepError, match="--workers must be at least 1, not 0"):
        run_sweep(spec, tmp_path / "w", workers=0, progress=False)
    # an empty path (the current folder), a folder of other files, --workers with a
    # cluster: refused before anything is written
    with pytest.raises(SweepError, match="an empty path"):
        run_sweep(spec, "", progress=False)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("mine")
    with pytest.raises(SweepError, match="docs: is not empty and not a sweep's output folder"):
        run_sweep(spec, tmp_path / "docs", progress=False)
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["notes.md"]
    with pytest.raises(SweepError, match="--workers sets the local processes; with "
                                         "--scheduler"):
        run_sweep(spec, tmp_path / "w", scheduler="tcp://127.0.0.1:1", workers=2,
                  progress=False)
    assert not (tmp_path / "w").exists()
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "sweep.json").write_text("{}")
    with pytest.raises(ReportError, match="sweep.json: not a sweep record"):
        load_results(broken)
    (broken / "sweep.json").unlink()
    with pytest.raises(ReportError, match="sweep.json: missing"):
        load_results(broken)
    (broken / "sweep.json").mkdir()
    with pytest.raises(ReportError, match="sweep.json: not a file"):
        load_results(broken)
    with pytest.raises(SweepError, match="sweep.json: not a file"):   # (said it had none)
        run_sweep(spec, broken, workers=1, progress=False)
    (broken / "sweep.json").rmdir()
    for text, message in [("{not json", "not a sweep record (Expecting property name"),
                          ('{"keys": [1, 2]}', "not a sweep record (keys = [1, 2] is not a list"),
                          ("[]", "not a sweep record (keys = null is not a list")]:
        (broken / "sweep.json").write_text(text)
        with pytest.raises(ReportError, match=re.escape(f"sweep.json: {message}")):
            load_results(broken)
    # the record's fields: each refused by name, and a code version under which none of
    # the rows hash to their keys is the record's fault, not the first row's
    record = json.loads((out / "sweep.json").read_text())
    for edit, message in [({"workloads": {}}, "workloads = {} is not the spec's workloads"),
                          ({"workloads": {**record["workloads"], "short": {
                              "prompt": "32", "output": 8}}},
                           'workloads.short = {"prompt": "32", "output": 8} is not a '
                           'workload'),
                          ({"workloads": {**record["workloads"], "short": {
                              "prompt": 32, "output": 8, "batch": 4}}},
                           "workloads.short = "),
                          ({"code_version": 7}, "code_version = 7 is not a version"),
                          ({"code_version": "0123"},
                           f"none of its {len(record['keys'])} points' rows hashes to its key "
                           f"under its code_version = \"0123\"")]:
        (broken / "sweep.json").write_text(json.dumps(record | edit))
        with pytest.raises(ReportError, match=re.escape(f"sweep.json: {message}")):
            load_results(broken)


def test_report_roofline_and_summary_know_the_weights_and_the_fixed_settings():
    """The roofline places MXINT4 projections by their 4.25-bit weights (a decode GEMV
    reads 17/32 of int8's bytes: ~1.88x the intensity), and the summary names prefetch as
    varied only when it was."""
    int8, mx = (matmul_intensity(1, 2048, 2048, w) for w in ("int8", "mxint4"))
    assert 1.87 < mx / int8 < 1.89
    assert matmul_intensity(128, 2048, 2048, "mxint4") > matmul_intensity(128, 2048, 2048)
    rows = [{"model": "tiny", "hw": "edge-8x8", "l2_bytes": b, "prefetch": True}
            for b in (1 << 16, 1 << 20)]
    assert "prefetch" not in _spec_summary(rows, [])
    rows[1]["prefetch"] = False
    assert _spec_summary(rows, []).endswith("prefetch on/off")
    # series and findings in natural order: 7nm before 16nm (text put it after 28nm)
    assert sorted(["28nm", "7nm", "16nm", "edge-16x16", "edge-4x4"],
                  key=lambda v: _order((v,))) == ["7nm", "16nm", "28nm", "edge-4x4",
                                                  "edge-16x16"]
    # a model and node that vary are named as varied (they were in neither list)
    rows = [{**r, "model": m, "node": n} for r in rows for m, n in (("a", "7nm"), ("b", "16nm"))]
    assert _spec_summary(rows, ["model", "node"]) == ("hw edge-8x8; varied: L2 64 KiB to 1 "
                                                     "MiB, model, node, prefetch on/off")


def test_roofline_names_each_operator_once_and_keeps_to_its_range(sweep, tmp_path,
                                                                   monkeypatch):
    """The roofline's legend is its four kinds of mark (it listed 13 operators in
    reused colours, most drawn on top of each other); operators of one intensity are
    named together beside their mark; the axes span the marks and the ridge."""
    from sweeps import report
    from sweeps.report import load_results
    from sweeps.spec import point_hardware

    _, out, _ = sweep
    # (the rows come in the order the workers finished them)
    row = next(r for r in load_results(out) if r["l2_bytes"] == 1 << 20 and r["prefetch"])
    drawn = []
    monkeypatch.setattr(report, "_save", lambda fig, out, name: drawn.append(fig))
    hw = point_hardware(row)
    report._roofline(row, hw, tmp_path)
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "roofline (edge-4x4: 16 MACs/cycle, 32 bytes/cycle)", "decode matmuls",
        "prefill (32-token chunks) matmuls",
        "decode step achieved (L2 1 MiB, prefetch on)"]
    names = [t.get_text() for t in ax.texts]
    ops = {"q", "k/v", "o", "gate/up", "down", "lm_head"}
    named = [n for label in names for n in label.split(", ")]
    assert sorted(named) == sorted(list(ops) * 2)          # each phase names each once
    lo, hi = ax.get_xlim()
    ridge = hw.pes / hw.dram_bytes_per_cycle
    assert lo < ridge < hi and hi / lo < 1e4


def test_an_empty_spec_is_refused_not_run_as_one_point(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(SpecError, match=f"{path}:1: no axes"):
        load_spec(path)


def test_pareto_fronts_are_drawn_per_workload(sweep, tmp_path):
    """Points of two workloads (whose tokens/s measure different work) get a front each;
    one front over both put the faster workload's points in front of the other's."""
    _, out, _ = sweep
    folder = tmp_path / "two"
    shutil.copytree(out, folder)
    rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    record = json.loads((folder / "sweep.json").read_text())
    slow = []
    for r in rows:
        rate = r["tokens_per_s"] / 3
        slow.append({**r, "workload": "long", "prompt": 2 * r["prompt"], "tokens_per_s": rate,
                     "ttft_s": 3 * r["ttft_s"], "tpot_s": 3 * r["tpot_s"],
                     "tokens_per_s_per_mm2": rate / r["area_mm2"],
                     "tokens_per_s_per_dollar": rate / r["cost_dollars"]})
        # (the key a sweep would give it, which the report checks)
        slow[-1]["key"] = point_key(slow[-1], {"long": {"prompt": 2 * r["prompt"],
                                                        "output": r["output"]}},
                                    record["code_version"])
    record["workloads"]["long"] = {"prompt": 2 * rows[0]["prompt"], "output": rows[0]["output"]}
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + slow))
    record["keys"] += [r["key"] for r in slow]
    (folder / "sweep.json").write_text(json.dumps(record))
    findings = write_report(folder)
    series = {p["series"] for p in findings["pareto"]}
    assert series == {"workload=long", "workload=short"}
    for name in series:
        front = [p for p in findings["pareto"] if p["series"] == name]
        assert all(a["area_mm2"] < b["area_mm2"] and a["tokens_per_s"] < b["tokens_per_s"]
                   for a, b in zip(front, front[1:], strict=False))
    assert {p["key"] for p in findings["pareto"] if p["series"] == "workload=long"} <= {
        r["key"] for r in slow}


def test_report_refuses_two_rows_of_one_point(sweep, tmp_path):
    """A row whose settings are another row's under a different key (a hand edit: a
    point's L2 size or prefetch changed, its key left) is refused naming both lines,
    before any figure (two values were drawn at one point)."""
    from sweeps.report import ReportError

    _, out, _ = sweep
    folder = tmp_path / "twice"
    shutil.copytree(out, folder)
    lines = (folder / "results.jsonl").read_text().splitlines()
    copy = {**json.loads(lines[0]), "key": "f" * 16}
    (folder / "results.jsonl").write_text("\n".join([*lines, json.dumps(copy)]) + "\n")
    record = json.loads((folder / "sweep.json").read_text())
    (folder / "sweep.json").write_text(json.dumps({**record, "keys": [*record["keys"],
                                                                     copy["key"]]}))
    for name in FIGURES:
        (folder / f"{name}.png").unlink(missing_ok=True)
    # the row's content does not hash to its key (``sweeps.runner.point_key``)
    with pytest.raises(ReportError, match=rf"results.jsonl:{len(lines) + 1}: its settings, "
                                          rf"workload lengths, model and hardware file are "
                                          rf"not those its key {'f' * 16} was made of"):
        write_report(folder)
    # ... and where the record does not say the code version the keys were made under
    (folder / "sweep.json").write_text(json.dumps({"keys": [*record["keys"], copy["key"]]}))
    with pytest.raises(ReportError, match=rf"results.jsonl:{len(lines) + 1}: the same point "
                                          rf"\(.*l2_bytes = {copy['l2_bytes']}, prefetch = "
                                          rf"{json.dumps(copy['prefetch'])}\) as line 1 under "
                                          rf"another key"):
        write_report(folder)
    assert not any((folder / f"{name}.png").exists() for name in FIGURES)


def test_the_csv_takes_the_columns_of_a_feasible_point_after_an_infeasible_one(tmp_path):
    """An infeasible first point has no metrics: the CSV's header was its columns, so a
    sweep whose first point was infeasible wrote a CSV without tokens/s."""
    import csv

    from sweeps.runner import _Writer

    writer = _Writer(tmp_path)
    writer.write({"key": "a", "l2_bytes": 4096, "feasible": False, "reason": "too small"})
    writer.write({"key": "b", "l2_bytes": 1 << 20, "feasible": True, "reason": "",
                  "tokens_per_s": 12.5})
    writer.close()
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["tokens_per_s"] for r in rows] == ["", "12.5"]
    again = _Writer(tmp_path)                        # rebuilt from results.jsonl alike
    again.close()
    assert list(csv.DictReader((tmp_path / "results.csv").open())) == rows
