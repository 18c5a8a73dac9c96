"""A weight load beside one GEMV, on the RTL against the performance model: how many L2
cycles the load engine's copier loses to the matmul unit's tile readers and writer, by
the GEMV's row length; and the same load beside vector instructions.

Each GEMV (one row of ``k`` bytes by ``n`` weight rows of ``k`` bytes) runs alone, then
beside a ``DMA_LOAD`` of ``--load-rows`` rows of ``--load-bytes`` bytes (dependency
tokens absent, so both start at once), and the load alone; one Verilator job runs them
all after an empty DRAM image (timing does not depend on the values). A row length that
is not a whole number of lines makes each weight row begin in the line the row before
ended in, which the reader reads again: a copier trailing the reader a bank behind is
refused that cycle (``arch.matmul_timing._refusals``, ``sweeps.perf._trapped``). The
vector unit's streams hold it alike: a ROPE over 27 tokens of 16 heads of 16 (a random
prefill's, whose frequency line every head reads again) lets the copier, trailing its
streams bank by bank, write about a line in five cycles (``vector_timing._copier_step``);
a REQUANT of int32 rows, about half its cycles::

    python -m benchmarks.rtl_pairs                          # edge-8x8, 64 KiB
    python -m benchmarks.rtl_pairs --hw edge-16x16 --k 96 249 256
"""

from __future__ import annotations

import json

from accel.args import ArgumentParser, run_command

ROW_BYTES = (40, 60, 96, 100, 130, 200, 249, 250, 256)


def run(hw_name: str, ks: list[int], n: int, load_rows: int, load_bytes: int) -> list[dict]:
    import numpy as np

    from accel.runtime import image_with_programs
    from arch.hardware import load_hardware
    from arch.isa import make
    from arch.occupancy import occupancy
    from rtl.common import rtl_params
    from rtl.sim import build_model, run_job
    from sweeps.perf import time_program

    hw = load_hardware(hw_name).replace(l2_bytes=64 << 10)
    W = hw.line_bytes
    # L2: x from W, the outputs from 8 KiB, the weights from 16 KiB, the load's rows from
    # 32 KiB, 16 KiB each at most (``check_sizes``)
    load = make("DMA_LOAD", dram_addr=1 << 16, l2_addr=32 << 10, rows=load_rows,
                row_bytes=load_bytes, dram_stride=load_bytes, l2_stride=load_bytes)
    programs = {"load": [load]}
    gemvs = {}
    for k in ks:
        gemvs[k] = make("MATMUL", mode=1, accumulate=0, w_layout=0, w_format=0, e_addr=0,
                        m=1, k=k, n=n, x_addr=W, w_addr=16 << 10, out_addr=8 << 10,
                        x_stride=k, w_stride=k, out_stride=4 * n)
        programs[f"gemv {k}"] = [gemvs[k]]
        programs[f"gemv {k} + load"] = [gemvs[k], load]
    # the vector instructions: L2 operands in the GEMVs' regions (unused by these programs)
    vectors = {
        "ROPE": make("ROPE", src_addr=(16 << 10) + 2 * W, dst_addr=8 << 10, rows=27,
                     heads=16, head_dim=16, pos0=0, freq_addr=0, row_stride=256),
        "REQUANT": make("REQUANT", out_bits=0, params=1, has_bias=0, rows=4, cols=128,
                        src_addr=16 << 10, dst_addr=8 << 10, src_stride=512,
                        dst_stride=128, param_addr=0, bias_addr=0)}
    for name, v in vectors.items():
        programs[name] = [v]
        programs[f"{name} + load"] = [v, load]
    data, entries = image_with_programs(np.zeros(1 << 17, np.uint8), programs)
    job = run_job(build_model(rtl_params(hw, image_bytes=data.size)), data, entries, {})
    for (name, _), entry in zip(entries, job.programs, strict=True):
        if entry["timed_out"] or entry["error"]:
            raise SystemExit(f"rtl_pairs: {hw.name}: program {name!r} did not finish "
                             f"(timed out: {entry['timed_out']}, error: {entry['error']})")
    rtl = {name: entry["counters"] for (name, _), entry in zip(entries, job.programs,
                                                                strict=True)}
    model = {name: time_program(p + [make("HALT")], hw) for name, p in programs.items()}
    rows = []
    for k in ks:
        pair, alone = f"gemv {k} + load", "load"
        occ = occupancy(gemvs[k], hw)
        rows.append({
            "benchmark": "rtl_pairs", "hw": hw.name, "k": k, "n": n,
            "gemv_rtl_cycles": rtl[f"gemv {k}"]["cycles"],
            "gemv_model_cycles": model[f"gemv {k}"].cycles,
            "load_alone_rtl_busy": rtl[alone]["load_busy"],
            "load_alone_model_busy": model[alone].busy["load"],
            "pair_rtl_cycles": rtl[pair]["cycles"], "pair_model_cycles": model[pair].cycles,
            "pair_rtl_load_busy": rtl[pair]["load_busy"],
            "pair_model_load_busy": model[pair].busy["load"],
            "copier_refusals_over_the_gemv": occ.paced_cycles - occ.paced_lines})
    for name, v in vectors.items():
        occ = occupancy(v, hw)
        rows.append({
            "benchmark": "rtl_pairs", "hw": hw.name, "vector": name,
            "vector_rtl_cycles": rtl[name]["cycles"], "vector_model_cycles": model[name].cycles,
            "load_alone_rtl_busy": rtl["load"]["load_busy"],
            "load_alone_model_busy": model["load"].busy["load"],
            "pair_rtl_cycles": rtl[f"{name} + load"]["cycles"],
            "pair_model_cycles": model[f"{name} + load"].cycles,
            "pair_rtl_load_busy": rtl[f"{name} + load"]["load_busy"],
            "pair_model_load_busy": model[f"{name} + load"].busy["load"],
            "copier_refusals_over_the_vector": occ.paced_cycles - occ.paced_lines})
    return rows


def check_sizes(ks: list[int], n: int, load_rows: int, load_bytes: int) -> str | None:
    """Why the operands would not fit ``run``'s L2 layout (None: they do): x of ``k``
    bytes below 8 KiB, ``n`` int32 outputs and ``k x n`` weight bytes and the load's
    ``load_rows x load_bytes`` in 16 KiB each."""
    for name, value in (("--n", n), ("--load-rows", load_rows),
                        ("--load-bytes", load_bytes), *(("--k", k) for k in ks)):
        if value < 1:
            return f"{name} {value}: must be at least 1"
    if max(ks) > 4096:
        return f"--k {max(ks)}: a row of x goes in 4 KiB"
    if 4 * n > 8 << 10:
        return f"--n {n}: the int32 outputs ({4 * n} bytes) go in 8 KiB"
    if max(ks) * n > 16 << 10:
        return (f"--k {max(ks)} --n {n}: the weights ({max(ks) * n} bytes) go in 16 KiB")
    if load_rows * load_bytes > 16 << 10:
        return (f"--load-rows {load_rows} --load-bytes {load_bytes}: the load "
                f"({load_rows * load_bytes} bytes) goes in 16 KiB")
    return None


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(prog="python -m benchmarks.rtl_pairs",
                            description=__doc__.split("\n\n")[0].rstrip(":"))
    parser.add_argument("--hw", default="edge-8x8")
    parser.add_argument("--k", type=int, nargs="+", default=list(ROW_BYTES),
                        help="the GEMVs' row lengths in bytes")
    parser.add_argument("--n", type=int, default=64, help="the GEMVs' weight rows")
    parser.add_argument("--load-rows", type=int, default=168)
    parser.add_argument("--load-bytes", type=int, default=96)
    args = parser.parse_args(argv)
    why = check_sizes(args.k, args.n, args.load_rows, args.load_bytes)
    if why:
        parser.error(why)
    from arch.hardware import load_hardware

    try:
        load_hardware(args.hw)
    except ValueError as e:
        parser.error(f"--hw {args.hw}: {e}")
    rows = run(args.hw, args.k, args.n, args.load_rows, args.load_bytes)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(f"{'k':>5}{'GEMV RTL':>10}{'model':>7}{'load alone':>12}{'model':>7}"
          f"{'load beside':>13}{'model':>7}{'lost RTL':>10}{'model':>7}{'refusals':>10}")
    for r in rows:
        if "vector" in r:
            continue
        lost_rtl = r["pair_rtl_load_busy"] - r["load_alone_rtl_busy"]
        lost_model = r["pair_model_load_busy"] - r["load_alone_model_busy"]
        print(f"{r['k']:>5}{r['gemv_rtl_cycles']:>10,}{r['gemv_model_cycles']:>7,}"
              f"{r['load_alone_rtl_busy']:>12,}{r['load_alone_model_busy']:>7,}"
              f"{r['pair_rtl_load_busy']:>13,}{r['pair_model_load_busy']:>7,}"
              f"{lost_rtl:>10}{lost_model:>7}{r['copier_refusals_over_the_gemv']:>10}")
    print(f"{'vector':>8}{'RTL':>7}{'model':>7}{'load beside':>13}{'model':>7}"
          f"{'pair RTL':>10}{'model':>7}{'refusals':>10}")
    for r in rows:
        if "vector" in r:
            print(f"{r['vector']:>8}{r['vector_rtl_cycles']:>7,}{r['vector_model_cycles']:>7,}"
                  f"{r['pair_rtl_load_busy']:>13,}{r['pair_model_load_busy']:>7,}"
                  f"{r['pair_rtl_cycles']:>10,}{r['pair_model_cycles']:>7,}"
                  f"{r['copier_refusals_over_the_vector']:>10}")
    return rows


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.rtl_pairs")
