"""Shared fixtures: small configs and the packaged tiny model, built once per session."""

from __future__ import annotations

import pytest

from models.config import ModelConfig


def pytest_configure(config):
    """A parallel run's controller (pytest-xdist), before its workers start, compiles the
    performance models' numba kernels once into their on-disk cache (``arch.kernels``),
    or loads them if they are there: the workers, and the processes they start (a
    sweep's pool, a Dask cluster, the CLI in a subprocess), then load them. With a cold
    cache each compiled them itself, and several at once: the sweep fixture of
    tests/sweeps/test_sweeps.py took 95 s with a cold cache and 5 s with a warm one
    (``--durations``, round 56). This warm-up took 49 s in one process with an emptied
    cache and 3 s with a full one. A failure here is left to the tests that meet it: the
    warm-up says so in a line and returns (raised here, it would stop the whole run)."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", default=None):
        return
    import sys

    print("the performance models' kernels: compiling them into numba's cache "
          "(build/numba), or loading them", file=sys.stderr, flush=True)
    try:
        _warm_kernels()
    except Exception as e:                   # noqa: BLE001 (the tests report it)
        print(f"the kernels' warm-up failed ({type(e).__name__}: {e}); the tests that "
              f"time programs will report it", file=sys.stderr, flush=True)


def _warm_kernels() -> None:
    """Time tiny's decode steps (int8 and MXINT4 weights, prefetch on and off) with both
    performance models and a 16-token prefill with the instruction-level one, on
    edge-8x8: every kernel the suite's common paths call."""
    from arch.hardware import load_hardware
    from compiler.driver import compile_step, compile_timing_step
    from models.evaluate import build_int_model
    from models.zoo import load_model
    from sweeps import analytic
    from sweeps.perf import time_build

    im, hw = build_int_model(load_model("tiny")), load_hardware("edge-8x8")
    for weights in ("int8", "mxint4"):
        for prefetch in (True, False):
            time_build(compile_timing_step(im.cfg, hw, 20, prefetch, weights))
            analytic.decode_step(im.cfg, hw, 20, prefetch, weights=weights)
            analytic.prefill(im.cfg, hw, 16, prefetch, weights=weights)
    time_build(compile_step(im.cfg, im.qm, hw, 0, 16))


def _small_config(**overrides) -> ModelConfig:
    base = dict(name="small", vocab_size=37, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                head_dim=16, d_ff=96, max_seq_len=48)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def small_config():
    """A factory of small model configs; keyword arguments override fields."""
    return _small_config


@pytest.fixture(scope="session")
def tiny_model():
    from models.zoo import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_int(tiny_model):
    from models.evaluate import build_int_model

    return build_int_model(tiny_model)


@pytest.fixture(scope="session")
def tiny_mx(tiny_model):
    """``tiny`` with MXINT4 projection weights."""
    from models.evaluate import build_int_model

    return build_int_model(tiny_model, weights="mxint4")


@pytest.fixture(scope="session")
def tiny_bpe():
    """The second packaged model (byte-level BPE, MQA, tied head) and its integer model."""
    from models.evaluate import build_int_model
    from models.zoo import load_model

    loaded = load_model("tiny-bpe")
    return loaded, build_int_model(loaded)


@pytest.fixture(scope="session")
def wide_vocab():
    """A model whose logits row (11,000 columns: 66 kB of int32 and int16) exceeds a
    64 KiB L2, with a tie for the largest logit at the first step: the row the model picks
    is copied to a column in another chunk of the vocabulary and made dominant. Returns
    ``(im, prompt, hw, (first, second))``: the integer model, the prompt, edge-8x8 with a
    64 KiB L2 (the configuration tests/rtl builds), and the tied columns."""
    import jax.numpy as jnp
    import numpy as np

    from accel.ladder import reference_generation
    from arch.hardware import load_hardware
    from models.evaluate import build_int_model
    from models.reference import init_params
    from models.zoo import LoadedModel

    cfg = _small_config(name="wide-vocab", vocab_size=11000, d_model=16, n_layers=1,
                        n_heads=1, n_kv_heads=1, head_dim=16, d_ff=32, max_seq_len=32)
    params = init_params(cfg, 0)
    prompt = [3, 1, 4, 1, 5]
    picked = reference_generation(build_int_model(LoadedModel(cfg, params, None, "")),
                                  prompt, 1).tokens[0]
    other = (picked + cfg.vocab_size // 2) % cfg.vocab_size
    lm = np.array(params["lm_head"])
    lm[picked] *= 4
    lm[other] = lm[picked]
    im = build_int_model(LoadedModel(cfg, {**params, "lm_head": jnp.asarray(lm)}, None, ""))
    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    return im, prompt, hw, tuple(sorted((picked, other)))


@pytest.fixture(scope="session")
def batch_with_a_bad_table(tiny_int):
    """Three sequences of tiny compiled together on edge-8x8 with 64 KiB of L2 (the
    RTL tests' configuration), then sequence 2's first block-table entry set to
    ``EVICTED`` (-1) in the image: every simulator must stop with BAD_BLOCK."""
    import numpy as np

    from accel.kv_blocks import EVICTED, plan_batch
    from arch.hardware import load_hardware
    from compiler.driver import compile_batch

    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    rng = np.random.default_rng(5)
    prompts = [[int(t) for t in rng.integers(0, tiny_int.cfg.vocab_size, n)] for n in (7, 12, 9)]
    plan = plan_batch(prompts, [2, 2, 2], max_batch=3, pool_blocks=6,
                      block_tokens=hw.kv_block_tokens)
    build = compile_batch(tiny_int.cfg, tiny_int.qm, hw, plan.sequences, plan.schedule, 6)
    region = build.mmap["block_table"]
    entries = region.size // (4 * len(prompts))
    at = region.offset + 4 * 2 * entries
    build.image.data[at:at + 4] = np.frombuffer(np.int32(EVICTED).tobytes(), np.uint8)
    return build


def _batch_with_an_entry(tiny_int, lengths, new, pool_blocks, seq, entry, block_of):
    """Sequences of tiny (prompts of ``lengths``, ``new`` tokens each) on edge-8x8 with 64
    KiB of L2, at most two at once in a pool of ``pool_blocks``, compiled; then entry
    ``entry`` of sequence ``seq``'s block table set in the image to ``block_of(plan)``.
    ``(plan, build)``."""
    import numpy as np

    from accel.kv_blocks import plan_batch
    from arch.hardware import load_hardware
    from compiler.driver import compile_batch

    hw = load_hardware("edge-8x8").replace(l2_bytes=64 * 1024)
    rng = np.random.default_rng(5)
    prompts = [[int(t) for t in rng.integers(0, tiny_int.cfg.vocab_size, n)] for n in lengths]
    plan = plan_batch(prompts, new, max_batch=2, pool_blocks=pool_blocks,
                      block_tokens=hw.kv_block_tokens)
    build = compile_batch(tiny_int.cfg, tiny_int.qm, hw, plan.sequences, plan.schedule,
                          pool_blocks)
    region = build.mmap["block_table"]
    at = region.offset + 4 * (seq * (region.size // (4 * len(prompts))) + entry)
    build.image.data[at:at + 4] = np.frombuffer(np.int32(block_of(plan)).tobytes(), np.uint8)
    return plan, build


@pytest.fixture(scope="session")
def batch_naming_a_freed_block(tiny_int):
    """Three sequences, the third joining after the first has finished and its block was
    freed (not reused: the manager reuses the least recently freed first), in a pool of 8;
    the third's first block-table entry pointed at the first's freed block after
    compiling. ``(build, program)``: the program whose walk first names it (the third's
    prefill, whose ``KV_LIVE`` map has that block free)."""
    plan, build = _batch_with_an_entry(tiny_int, (7, 12, 9), [2, 3, 2], 8, 2, 0,
                                       lambda plan: plan.sequences[0].table[0])
    freed = plan.sequences[0].table[0]
    third = [i for i, s in enumerate(plan.schedule) if 2 in s.seqs][0]
    assert plan.schedule[third].kind == "prefill" and freed not in plan.live[third]
    assert all(freed not in sp.table for sp in plan.sequences[1:])
    return build, build.programs[third].name


@pytest.fixture(scope="session")
def batch_naming_another_sequences_block(tiny_int):
    """Three sequences in a pool of 3 blocks: the second's second block is the first's,
    freed and given to it; the third's is live beside it. The second's second table entry
    pointed at the third's block after compiling (a stale or corrupted entry naming a live
    sequence's block, which a map of free blocks alone cannot see). ``(build, program)``:
    the program whose walk first names it (the second's decode step that writes its 17th
    row, where the third still runs)."""
    plan, build = _batch_with_an_entry(tiny_int, (7, 14, 9), [2, 4, 3], 3, 1, 1,
                                       lambda plan: plan.sequences[2].table[0])
    other = plan.sequences[2].table[0]
    assert plan.sequences[1].table[1] == plan.sequences[0].table[0]      # reused
    last = len(plan.schedule) - 1
    assert plan.schedule[last].seqs == (1, 2) and plan.live[last][other] == 3
    return build, build.programs[last].name
