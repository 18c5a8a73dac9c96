"""The compiler's passes one at a time (compiler/pipeline.py, compiler/schedule.py) and the
verifier between them (compiler/verify.py): each pass on a small program, each invariant
broken on purpose, and the static race check against the ISA simulator's dynamic one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from arch.hardware import load_hardware
from arch.isa import Engine, make
from compiler import pipeline
from compiler.asm import decode_program
from compiler.backend import BuildContext, Code
from compiler.driver import compile_generation
from compiler.frontend import lower_step
from compiler.image import DramImage, MemoryMap
from compiler.isasim import IsaSimulator, RaceError
from compiler.pipeline import PassContext, ProgramIR, run_passes
from compiler.schedule import program_accesses
from compiler.verify import VerifyError, verify_code, verify_schedule

HW = load_hardware("edge-4x4")
LOAD, COMPUTE, STORE = (1 << int(e) for e in (Engine.LOAD, Engine.COMPUTE, Engine.STORE))


def _image(rw_bytes=4096, ro_bytes=4096):
    mmap = MemoryMap()
    mmap.add("param:w", ro_bytes)
    mmap.start_writable()
    mmap.add("out", rw_bytes)
    mmap.add("counters:program", 8 * 12)
    return DramImage(mmap, True)


def _load(dram, l2, rows=1, row_bytes=64):
    return make("DMA_LOAD", dram_addr=dram, l2_addr=l2, rows=rows, row_bytes=row_bytes,
                dram_stride=row_bytes, l2_stride=row_bytes)


def _store(l2, dram, row_bytes=64):
    return make("DMA_STORE", l2_addr=l2, dram_addr=dram, rows=1, row_bytes=row_bytes,
                l2_stride=row_bytes, dram_stride=row_bytes)


def _matmul(x, w, out, m=1, k=64, n=4):
    return make("MATMUL", mode=0, accumulate=0, w_layout=0, x_addr=x, w_addr=w, out_addr=out,
                w_format=0, e_addr=0,
                m=m, k=k, n=n, x_stride=k, w_stride=k, out_stride=4 * n)


def _program(instrs, image, prefetch=True):
    code = Code(list(instrs) + [make("HALT")])
    p = ProgramIR("program", "decode", [], code=code,
                  accesses=program_accesses(code.instrs, HW, image))
    return p, PassContext(HW, prefetch, image)


def test_generate_pass_lowers_graphs_to_checked_instructions(tiny_int):
    cfg = tiny_int.cfg
    build = compile_generation(cfg, tiny_int.qm, HW, [1, 2, 3], 2)     # memory map, image
    graphs = [lower_step(cfg, tiny_int.qm, 3, 1, name="decode@3")]
    context = PassContext(HW, True, build.image, BuildContext(HW, cfg, build.mmap, True))
    p = pipeline.generate_pass(ProgramIR("decode_000", "decode", graphs), context)
    assert p.code.instrs[-1].mnemonic == "HALT"
    assert p.code.instrs[-2].mnemonic == "STORE_COUNTERS"
    assert len(p.accesses) == len(p.code.instrs)
    assert {"MATMUL", "SOFTMAX", "KV_PREFETCH", "KV_APPEND"} <= {i.mnemonic for i in p.code.instrs}
    verify_code(p.name, p.code.instrs, p.code.after, p.accesses, HW, build.image)
    # The same graphs through every pass give the program the driver put in the build.
    whole = run_passes(ProgramIR("decode_000", "decode", graphs), context)
    assert whole.instrs == build.programs[1].instrs


def test_dependencies_pass_finds_raw_war_and_waw_across_engines():
    image = _image()
    rw = image.mmap["out"].offset
    p, c = _program([
        _load(0, 0),                       # 0: L2 [0, 64)
        _load(64, 256),                    # 1: L2 [256, 320)
        _matmul(0, 256, 1024),             # 2: reads both loads, writes [1024, 1040)
        _store(1024, rw, 16),              # 3: reads the result
        _load(128, 0),                     # 4: overwrites what 2 read (WAR)
        _load(rw, 2048),                   # 5: reads DRAM that 3 wrote (RAW through DRAM)
    ], image)
    deps = pipeline.dependencies_pass(p, c).deps
    assert deps[2] == {int(Engine.LOAD): 1}
    assert deps[3] == {int(Engine.COMPUTE): 2}
    assert deps[4] == {int(Engine.COMPUTE): 2}
    assert deps[5] == {int(Engine.STORE): 3}
    assert deps[0] == deps[1] == {}


def test_hoist_pass_moves_loads_up_to_their_dependencies_only():
    image = _image()
    instrs = [_load(0, 0), _matmul(0, 0, 4096)]
    # A chain of matmuls, then loads that no matmul needs: prefetch hoists them up to
    # LOOKAHEAD ahead of the first instruction that needs a load; the load that the
    # matmul overwrote's reader needs stays behind that reader.
    instrs += [_matmul(0, 0, 4096 + 64 * i) for i in range(1, 4)]
    instrs += [_load(64 * i, 8192 + 64 * i) for i in range(3)]
    instrs += [_load(0, 0)]                                    # WAR with every matmul
    p, c = _program(instrs, image)
    p = pipeline.dependencies_pass(p, c)
    order = pipeline.hoist_pass(p, c).order
    position = {j: k for k, j in enumerate(order)}
    assert all(position[j] < position[1] for j in (5, 6, 7))   # free loads hoisted
    assert position[8] > position[4]                            # the WAR load waits
    computes = [j for j in order if p.code.instrs[j].engine != Engine.LOAD]
    assert computes == sorted(computes)
    off = dataclasses.replace(c, prefetch=False)
    assert pipeline.hoist_pass(pipeline.dependencies_pass(p, off), off).order == list(
        range(len(instrs) + 1))


def test_insert_tokens_pass_sets_one_token_per_needed_ordering():
    image = _image()
    p, c = _program([_load(0, 0), _load(64, 256), _matmul(0, 256, 1024),
                     _store(1024, image.mmap["out"].offset, 16)], image)
    p = pipeline.hoist_pass(pipeline.dependencies_pass(p, c), c)
    out = pipeline.insert_tokens_pass(p, c).instrs
    assert [(i.mnemonic, i.wait, i.signal) for i in out] == [
        ("DMA_LOAD", 0, 0), ("DMA_LOAD", 0, COMPUTE),          # the later load covers both
        ("MATMUL", LOAD, STORE), ("DMA_STORE", COMPUTE, 0), ("HALT", 0, 0)]


def test_encode_pass_round_trips(tiny_int):
    build = compile_generation(tiny_int.cfg, tiny_int.qm, HW, [1, 2], 2)
    p = ProgramIR("decode_000", "decode", [], instrs=build.programs[1].instrs)
    binary = pipeline.encode_pass(p, None).binary
    assert decode_program(binary) == build.programs[1].instrs


def _scheduled(image, prefetch=True):
    rw = image.mmap["out"].offset
    p, c = _program([_load(0, 0), _load(64, 256), _matmul(0, 256, 1024),
                     _store(1024, rw, 16), _load(128, 0)], image, prefetch)
    return run_passes(p, c, pipeline.SCHEDULE), c


def test_verify_schedule_finds_a_dropped_token_pair_as_a_race():
    image = _image()
    p, _ = _scheduled(image)
    verify_schedule(p.name, p.code.instrs, p.order, p.instrs, p.accesses, HW, image)
    instrs = list(p.instrs)
    m = next(k for k, i in enumerate(instrs) if i.mnemonic == "MATMUL")
    s = next(k for k, i in enumerate(instrs) if i.mnemonic == "DMA_STORE")
    instrs[m] = instrs[m].replace(signal=instrs[m].signal & ~STORE)
    instrs[s] = instrs[s].replace(wait=instrs[s].wait & ~COMPUTE)
    with pytest.raises(VerifyError, match=rf"instruction {s} \(DMA_STORE.*reads L2 .* that "
                                          rf"instruction {m} \(MATMUL.* writes.*race"):
        verify_schedule(p.name, p.code.instrs, p.order, instrs, p.accesses, HW, image)


@pytest.mark.parametrize("mutation, message", [
    ("extra_signal", "load engine to the store engine are never consumed"),
    ("drop_signal", "no earlier instruction signals"),
    ("swap", "changed the instructions"),
    ("operand", "changed the instructions"),
])
def test_verify_schedule_refuses_unmatched_tokens_and_changed_instructions(mutation, message):
    image = _image()
    p, _ = _scheduled(image)
    instrs, order = list(p.instrs), list(p.order)
    m = next(k for k, i in enumerate(instrs) if i.mnemonic == "MATMUL")
    if mutation == "extra_signal":
        instrs[0] = instrs[0].replace(signal=instrs[0].signal | STORE)
    elif mutation == "drop_signal":
        instrs[m] = instrs[m].replace(signal=0)
    elif mutation == "swap":
        instrs[0], instrs[1] = instrs[1], instrs[0]
    else:
        instrs[m] = instrs[m].replace(n=8)
    with pytest.raises(VerifyError, match=message):
        verify_schedule(p.name, p.code.instrs, order, instrs, p.accesses, HW, image)


def test_verify_code_refuses_read_only_writes_bad_operands_and_a_missing_halt():
    image = _image()
    for instrs, message in [
        ([_store(0, 0)], "writes read-only DRAM"),                     # over the weights
        ([_load(0, HW.l2_bytes - 32)], "beyond its size"),             # past the L2
        ([_matmul(0, 256, 1024, k=0)], "empty dimension"),
    ]:
        p, _ = _program(instrs, image)
        with pytest.raises(VerifyError, match=message):
            verify_code(p.name, p.code.instrs, p.code.after, p.accesses, HW, image)
    p, _ = _program([_load(0, 0)], image)
    with pytest.raises(VerifyError, match="does not end with HALT"):
        verify_code(p.name, p.code.instrs[:-1], {}, p.accesses[:-1], HW, image)


def test_order_and_dependency_verifiers_refuse_broken_outputs():
    image = _image()
    p, c = _scheduled(image)
    m = next(j for j, i in enumerate(p.code.instrs) if i.mnemonic == "MATMUL")
    with pytest.raises(VerifyError, match="placed before"):
        pipeline._verify_order(dataclasses.replace(p, order=[m] + [j for j in p.order
                                                                   if j != m]), c)
    with pytest.raises(VerifyError, match="not an earlier instruction of another engine"):
        pipeline._verify_deps(dataclasses.replace(p, deps=[{int(Engine.COMPUTE): m}]
                                                  + p.deps[1:]), c)


def test_a_scheduler_bug_fails_at_compile_time_naming_the_pass(tiny_int, monkeypatch):
    """A scheduler that forgets the compute -> store tokens: the compile fails in the
    verifier after insert_tokens, naming the race, not later on a simulator."""
    real = pipeline.insert_tokens

    def forgetful(instrs, deps, order):
        out = real(instrs, deps, order)
        return [i.replace(signal=i.signal & ~STORE) if i.engine == Engine.COMPUTE else
                i.replace(wait=i.wait & ~COMPUTE) if i.engine == Engine.STORE else i
                for i in out]

    monkeypatch.setattr(pipeline, "insert_tokens", forgetful)
    with pytest.raises(VerifyError, match=r"after pass insert_tokens: prefill: instruction "
                                          r"\d+ \(.*race"):
        compile_generation(tiny_int.cfg, tiny_int.qm, HW, [1, 2, 3], 2)


def test_static_race_check_is_sound_against_the_isa_simulator(tiny_int):
    """Drop random matched token pairs from a compiled decode step: whenever the ISA
    simulator (vector clocks at byte granularity, while executing) finds a race, the
    static check (at page granularity, before running) has refused the program too."""
    build = compile_generation(tiny_int.cfg, tiny_int.qm, HW, [5, 6, 7], 2)
    prog = build.programs[1].instrs
    acc = program_accesses(prog, HW, build.image)
    identity = list(range(len(prog)))
    rng = np.random.default_rng(0)
    races = static = 0
    for _ in range(10):
        instrs = list(prog)
        for _ in range(2):
            # the k-th wait of B on A consumes A's k-th signal to B: drop both
            waits = [(j, a) for j, i in enumerate(instrs) for a in range(3) if i.wait >> a & 1]
            j, a = waits[int(rng.integers(len(waits)))]
            b = int(instrs[j].engine)
            k = sum(1 for i in instrs[:j] if i.engine == instrs[j].engine and i.wait >> a & 1)
            s = [n for n, i in enumerate(instrs) if int(i.engine) == a and i.signal >> b & 1][k]
            instrs[j] = instrs[j].replace(wait=instrs[j].wait & ~(1 << a))
            instrs[s] = instrs[s].replace(signal=instrs[s].signal & ~(1 << b))
        try:
            verify_schedule("decode", prog, identity, instrs, acc, HW, build.image)
        except VerifyError:
            static += 1
            refused = True
        else:
            refused = False
        try:
            IsaSimulator(HW, build.image.data).run(instrs)
        except RaceError:
            races += 1
            assert refused, "the ISA simulator found a race the static check let through"
    assert races >= 1 and static >= races
