"""Random steps for checking the performance models out of sample.

Contract
--------
``random_step(rng)`` draws one ``RandomStep``: a model shape, a hardware description and a
step (a decode step at a KV length, or a prefill of a prompt), with prefetch on or off and
int8 or MXINT4 weights. The draws cover what no calibration program uses: head_dim 16 to
128; multi-head, grouped-query and multi-query attention; odd widths; 1 to 3 layers; a
QKV bias; edge-4x4, edge-8x8, edge-16x16 and a non-square 4 x 8 array; DRAM at 1 to 4
bytes per cycle as well as the presets' bandwidth; L2 from 64 KiB to 1 MiB; KV lengths
and prompts that do and do not divide the array and the KV block.

``benchmarks.perf_model --only random`` times many of them with both performance models
and prints the error table.

``rtl_hardware()`` names the configurations the RTL test set runs on (each is one
Verilator build), and ``random_rtl_step(rng, hw)`` draws a step as above moved onto one of
them, redrawn until the compiler maps it and its DRAM image fits the RTL model's DRAM.
``accel.ladder.run_random_step`` runs one on the ISA simulator and the RTL and times it;
``python -m benchmarks.perf_calibration --random N`` prints the table.

Tested by tests/sweeps/test_perf_model.py (a fixed draw through both performance models)
and tests/rtl/test_random_steps.py (a fixed draw on the RTL).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from arch.hardware import HardwareConfig, load_hardware
from compiler.driver import compile_step
from compiler.ir import CompileError
from models.config import ModelConfig
from models.integer import quant_struct


@dataclass(frozen=True)
class RandomStep:
    cfg: ModelConfig
    hw: HardwareConfig
    weights: str            # "int8" or "mxint4"
    start: int              # KV length of a decode step; 0 for a prefill
    tokens: int             # 1 for a decode step, else the prompt
    prefetch: bool

    def describe(self) -> str:
        c, h = self.cfg, self.hw
        step = f"decode at {self.start}" if self.tokens == 1 else f"prefill of {self.tokens}"
        return (f"{step}; d_model {c.d_model}, d_ff {c.d_ff}, {c.n_layers} layers, "
                f"{c.n_heads}/{c.n_kv_heads} heads of {c.head_dim}, vocab {c.vocab_size}"
                f"{', qkv bias' if c.qkv_bias else ''}; {h.array_rows}x{h.array_cols}, "
                f"{h.l2_bytes // 1024} KiB, {h.dram_bytes_per_cycle} B/cycle, prefetch "
                f"{'on' if self.prefetch else 'off'}, {self.weights}")


def random_step(rng: np.random.Generator, max_seq_len: int = 256, mx_share: float = 0.0
                ) -> RandomStep:
    """One random model, hardware and step (see the module docstring); with ``mx_share``,
    that share of the draws rounds the MLP width up to a multiple of 32, so that more of
    them can take MXINT4 weights (every projection's reduction a whole number of
    blocks)."""
    head_dim = int(rng.choice([16, 32, 64, 128]))
    n_kv = int(rng.choice([1, 2, 4]))
    group = int(rng.choice([1, 2, 4]))
    d_model = int(rng.choice([48, 64, 80, 96, 128, 160]))
    # drawn in this order so that mx_share = 0 draws exactly what it always has
    vocab_size, n_layers = int(rng.integers(40, 3000)), int(rng.integers(1, 4))
    d_ff = int(rng.integers(40, 400))
    if mx_share and rng.random() < mx_share:    # a multiple of MXINT4's 32-element block
        d_ff = -(-d_ff // 32) * 32
    cfg = ModelConfig(name="random", vocab_size=vocab_size, d_model=d_model,
                      n_layers=n_layers, n_heads=n_kv * group, n_kv_heads=n_kv,
                      head_dim=head_dim, d_ff=d_ff,
                      max_seq_len=max_seq_len, qkv_bias=bool(rng.random() < 0.3))
    name = str(rng.choice(["edge-4x4", "edge-8x8", "edge-16x16", "4x8"]))
    hw = (load_hardware("edge-8x8").replace(name="edge-4x8", array_rows=4, array_cols=8)
          if name == "4x8" else load_hardware(name))
    if rng.random() < 0.4 and hw.line_bytes <= 32:
        hw = hw.replace(dram_bytes_per_cycle=int(rng.choice([1, 2, 4])))
    hw = hw.replace(l2_bytes=int(rng.choice([64, 128, 256, 1024])) * 1024)
    mx = all(n % 32 == 0 for n in (cfg.d_model, cfg.d_ff, cfg.q_dim))
    weights = str(rng.choice(["int8", "mxint4"])) if mx else "int8"
    prefetch = bool(rng.random() < 0.5)
    if rng.random() < 0.6:
        start, tokens = int(rng.integers(1, max_seq_len - 56)), 1
    else:
        start, tokens = 0, int(rng.integers(2, 100))
    return RandomStep(cfg, hw, weights, start, tokens, prefetch)


def rtl_hardware() -> tuple[HardwareConfig, ...]:
    """The RTL test set's configurations: edge-8x8 with a 64 KiB L2 and edge-4x4 (the two
    that tests/rtl builds; edge-4x4's L2 moves one line a cycle, as many as its DRAM), a
    non-square 4 x 8 array, edge-8x8 at 2 DRAM bytes a cycle (low bandwidth) and
    edge-16x16 at its 51 bytes a cycle (high bandwidth, 64-byte lines)."""
    e8 = load_hardware("edge-8x8")
    return (e8.replace(l2_bytes=64 * 1024),
            load_hardware("edge-4x4"),
            e8.replace(name="edge-4x8", array_rows=4, l2_bytes=128 * 1024),
            e8.replace(name="edge-8x8-2B", dram_bytes_per_cycle=2, l2_bytes=128 * 1024),
            load_hardware("edge-16x16").replace(l2_bytes=1024 * 1024))


def random_rtl_step(rng: np.random.Generator, hw: HardwareConfig,
                    max_image_bytes: int = 1 << 20) -> RandomStep:
    """A ``random_step`` (``mx_share`` 0.4) moved onto ``hw`` (its model, step, prefetch
    and weight format kept), redrawn until the compiler maps it and its DRAM image is at most
    ``max_image_bytes`` (so that every step on ``hw`` runs on one Verilator model:
    ``rtl.common.rtl_dram_bytes``)."""
    while True:
        step = dataclasses.replace(random_step(rng, mx_share=0.4), hw=hw)
        try:
            build = compile_step(step.cfg, quant_struct(step.cfg, step.weights), hw,
                                 step.start, step.tokens, step.prefetch)
        except CompileError:
            continue
        if build.mmap.size <= max_image_bytes:
            return step
