"""Each instruction of a compiled tiny decode step run alone on the RTL, against
``arch.occupancy``: the per-instruction agreement that ``occupancy.CALIBRATION`` was
fitted on, by instruction class.

Every instruction of the program (dependency tokens stripped) becomes a program of its
own, the instruction then ``HALT``, placed after the build's DRAM image; one Verilator
job runs them all in order, and each program's busy counter for the instruction's engine
is compared with the occupancy the performance model gives it::

    python -m benchmarks.perf_calibration                    # edge-8x8 and edge-4x4
    python -m benchmarks.perf_calibration --hw edge-4x4 --prefetch off [--l2 BYTES]
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def image_with_programs(image, programs: dict) -> tuple:
    """A DRAM image with each named list of instructions (``HALT`` added) placed after it
    as a program of its own: ``(data, [(name, byte offset), ...])`` for ``run_job``."""
    from arch.isa import make
    from compiler.asm import encode_program

    blobs = {k: encode_program(list(v) + [make("HALT")]) for k, v in programs.items()}
    base = -(-image.size // 64) * 64
    data = np.zeros(base + sum(len(b) for b in blobs.values()), np.uint8)
    data[:image.size] = image
    entries, offset = [], base
    for name, blob in blobs.items():
        data[offset:offset + len(blob)] = np.frombuffer(blob, np.uint8)
        entries.append((name, offset))
        offset += len(blob)
    return data, entries


def run_one(tiny, im, hw, prefetch: bool) -> dict:
    from arch.isa import Engine
    from arch.occupancy import occupancy
    from compiler.driver import compile_generation
    from rtl.common import rtl_params
    from rtl.sim import build_model, run_job

    build = compile_generation(im.cfg, im.qm, hw, tiny.tokenizer.encode("ROMEO:"), 2,
                               prefetch=prefetch)
    decode = next(p for p in build.programs if p.kind == "decode")
    instrs = [i.replace(wait=0, signal=0) for i in decode.instrs
              if i.engine != Engine.CONTROL and i.mnemonic != "STORE_COUNTERS"]
    data, programs = image_with_programs(build.image.data,
                                         {f"i{n}": [instr] for n, instr in enumerate(instrs)})
    model = build_model(rtl_params(hw, image_bytes=data.size))
    job = run_job(model, data, programs, {})
    read_i32 = build.image.read_i32
    by_class: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])   # rtl, model, count
    for instr, entry in zip(instrs, job.programs, strict=True):
        if entry["timed_out"] or entry["error"]:
            raise RuntimeError(f"{instr.mnemonic} did not complete alone on the RTL: {entry}")
        engine = instr.engine.name.lower()
        key = instr.mnemonic + (f" {'GEMV' if instr.fields()['mode'] else 'GEMM'}"
                                if instr.mnemonic == "MATMUL" else "")
        row = by_class[key]
        row[0] += entry["counters"][f"{engine}_busy"]
        row[1] += occupancy(instr, hw, read_i32).cycles
        row[2] += 1
    classes = {k: {"instructions": n, "rtl_busy": r, "model_busy": m,
                   "error_pct": round(100 * (m - r) / r, 2)}
               for k, (r, m, n) in sorted(by_class.items())}
    return {"hw": hw.name, "prefetch": prefetch, "instructions": len(instrs),
            "classes": classes}


def main(argv: list[str] | None = None) -> list[dict]:
    from benchmarks.rtl_tiny import each_run

    rows = each_run("perf_calibration", __doc__.splitlines()[0], run_one, argv,
                    prefetch=("on",))
    for row in rows:
        print(f"{row['hw']}, prefetch {'on' if row['prefetch'] else 'off'}:")
        print(f"{'class':<16}{'n':>5}{'RTL busy':>11}{'model':>11}{'error':>9}")
        for name, c in row["classes"].items():
            print(f"{name:<16}{c['instructions']:>5}{c['rtl_busy']:>11,}"
                  f"{c['model_busy']:>11,}{c['error_pct']:>8.2f}%")
    return rows


if __name__ == "__main__":
    main()
