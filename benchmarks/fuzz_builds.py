"""Benchmark: bit flips in a saved build folder, every one refused by its integrity check.

Compiles tiny for edge-4x4 (a five-token prompt, three new tokens), saves the build, then
flips one random bit at a time in a random file of the folder (the program files, the
DRAM image, the listings, the tokenizer-free manifest) and loads it with
``compiler.buildfolder.load_build``: each flip must raise ``BuildError``. Prints the flips
per file and how many loaded (must be 0). The suite runs a few dozen
(``tests/compiler/test_buildfolder.py``). ``python -m benchmarks.fuzz_builds [--flips N]``
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from accel.args import ArgumentParser, run_command


def main(argv=None) -> dict:
    from arch.hardware import load_hardware
    from compiler.buildfolder import BuildError, load_build
    from compiler.driver import compile_generation
    from models.evaluate import build_int_model
    from models.zoo import load_model

    parser = ArgumentParser(prog="python -m benchmarks.fuzz_builds")
    parser.add_argument("--flips", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    im = build_int_model(load_model("tiny"))
    build = compile_generation(im.cfg, im.qm, load_hardware("edge-4x4"), [5, 9, 13, 2, 7], 3)
    rng = np.random.default_rng(args.seed)
    flips, refused, loaded = Counter(), Counter(), []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build.save(Path(tmp) / "tiny")
        files = sorted(p for p in folder.iterdir())
        for _ in range(args.flips):
            path = files[rng.integers(len(files))]
            original = path.read_bytes()
            data = bytearray(original)
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
            path.write_bytes(bytes(data))
            flips[path.name] += 1
            try:
                load_build(folder)
                loaded.append(path.name)
            except BuildError:
                refused[path.name] += 1
            finally:
                path.write_bytes(original)
        load_build(folder)                      # the restored folder loads again
    result = {"benchmark": "fuzz_builds", "flips": args.flips, "refused": sum(refused.values()),
              "loaded": len(loaded), "loaded_files": sorted(set(loaded)),
              "flips_per_file": dict(sorted(flips.items())),
              "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_command(main, "python -m benchmarks.fuzz_builds")
