"""Float versus integer evaluation on held-out text, and greedy generation.

Contract
--------
* ``calibration_windows(tokenizer, text)`` – the fixed calibration set: windows drawn with
  a fixed seed from the *training* split (never the held-out text) of the model's own
  text (``model_text``: the corpus its checkpoint was trained on, else the default).
* ``build_int_model(loaded, weights=...)`` – calibrate and quantise a loaded model, its
  projection weights in ``int8`` or ``mxint4`` (``integer.WEIGHT_FORMATS``).
* ``evaluate(loaded, qmodel, baseline=...)`` – perplexity of the float and the integer
  model and their next-token top-1 agreement over the held-out split, in consecutive
  windows of ``max_seq_len`` tokens; with a second integer model (``baseline``: the int8
  one beside an MXINT4 one) its perplexity and the agreement between the two as well.
* ``evaluate_kv(loaded, qmodel, kv)`` – the integer model with its KV cache compressed
  chunk by chunk (``integer.KVCompression``) against the same model uncompressed, on the
  held-out split: perplexity, top-1 agreement, and the bits the chunks were given.
* ``generate_float`` / ``generate_int`` – greedy generation with prefill and KV-cache
  decode steps.

Tested by tests/models/test_integer.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from models import numerics as N
from models.config import ModelConfig
from models.integer import (
    KVCompression,
    QuantModel,
    Scales,
    calibrate,
    init_int_cache,
    int_decode_step,
    int_forward,
    int_prefill,
    quantize,
)
from models.reference import decode_step, forward, init_cache, prefill
from models.tokenizer import CharTokenizer, HFTokenizer
from models.train import default_corpus, split_text
from models.zoo import LoadedModel

# The calibration set: static scales are the peaks the float model reaches on it, so a
# larger set leaves fewer held-out activations beyond them (saturated). 64 windows of 256
# tokens, chosen among 16 x 128, 64 x 128, 64 x 256 and 256 x 256 by the held-out
# agreement (python -m benchmarks.calibration_size; docs/numerics.md).
CALIBRATION_WINDOWS = 64
CALIBRATION_LEN = 256
CALIBRATION_SEED = 7


@dataclass(frozen=True)
class IntModel:
    cfg: ModelConfig
    qm: QuantModel
    scales: Scales
    weights: str = "int8"          # the projection weights' format (integer.WEIGHT_FORMATS)


@dataclass(frozen=True)
class EvalResult:
    tokens: int
    float_ppl: float
    int_ppl: float
    top1_agreement: float
    weights: str = "int8"
    baseline_weights: str | None = None          # the second integer model, if any
    baseline_ppl: float | None = None
    top1_agreement_vs_baseline: float | None = None

    @property
    def ppl_ratio(self) -> float:
        return self.int_ppl / self.float_ppl

    def to_dict(self) -> dict:
        d = {"tokens": self.tokens, "weights": self.weights, "float_ppl": self.float_ppl,
             "int_ppl": self.int_ppl, "ppl_ratio": self.ppl_ratio,
             "top1_agreement": self.top1_agreement}
        if self.baseline_weights is not None:
            d.update({f"{self.baseline_weights}_ppl": self.baseline_ppl,
                      f"top1_agreement_vs_{self.baseline_weights}":
                          self.top1_agreement_vs_baseline})
        return d


def corpus_text(path: str | Path | None = None) -> str:
    """The text of ``path`` (default: ``train.default_corpus``); ``ValueError`` naming it
    where it cannot be read as text."""
    path = Path(path or default_corpus())
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"corpus {path}: cannot be read as text "
                         f"({getattr(e, 'strerror', None) or e})") from None


def model_text(loaded: LoadedModel) -> tuple[str, Path]:
    """``(text, its path)``: what ``loaded`` is calibrated and evaluated on, the corpus it
    was trained on (``LoadedModel.corpus``), else the default corpus (a model trained on
    another text has characters the default's tokenizer lacks, or the other way round)."""
    if loaded.corpus is None:
        return corpus_text(), default_corpus()
    try:
        return loaded.corpus.read_text(), loaded.corpus
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{loaded.source}: its training corpus {loaded.corpus} "
                         f"(train_log.json) cannot be read as text "
                         f"({getattr(e, 'strerror', None) or e}); move the text back or "
                         f"retrain") from None


def calibration_windows(tokenizer: CharTokenizer | HFTokenizer | None, cfg: ModelConfig,
                        text: str | None = None, windows: int = CALIBRATION_WINDOWS,
                        length: int = CALIBRATION_LEN, source: Path | None = None
                        ) -> np.ndarray:
    """``[windows, min(length, max_seq_len)]`` token windows from the training split of
    ``text`` (read from ``source``, the default corpus without either; random tokens
    without a tokenizer)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    length = min(length, cfg.max_seq_len)
    if tokenizer is None:
        return rng.integers(0, cfg.vocab_size, size=(windows, length), dtype=np.int32)
    train_text, _ = split_text(text if text is not None else corpus_text())
    try:
        data = np.asarray(tokenizer.encode(train_text), np.int32)
    except ValueError as e:
        where = source or ("the given text" if text is not None else default_corpus())
        raise ValueError(f"calibration text (the training split of {where}): {e}") from None
    starts = rng.integers(0, len(data) - length, size=windows)
    return np.stack([data[s:s + length] for s in starts])


def build_int_model(loaded: LoadedModel, text: str | None = None,
                    weights: str = "int8", windows: int = CALIBRATION_WINDOWS,
                    length: int = CALIBRATION_LEN) -> IntModel:
    """Calibrate (``calibration_windows``: ``windows`` of ``length`` tokens) and quantise
    with projection weights in ``weights`` (``ValueError`` for an unknown format, or
    naming a tensor that cannot be quantised in it)."""
    source = None
    if text is None and loaded.tokenizer is not None:
        text, source = model_text(loaded)
    tokens = calibration_windows(loaded.tokenizer, loaded.cfg, text, windows, length, source)
    scales = calibrate(loaded.params, loaded.cfg, tokens)
    return IntModel(loaded.cfg, quantize(loaded.params, loaded.cfg, scales, weights), scales,
                    weights)


@partial(jax.jit, static_argnames="cfg")
def _float_logits(params, tokens_BxT, cfg):
    return jax.vmap(lambda t: forward(params, t, cfg))(tokens_BxT)


def _nll_and_argmax(logits_BxTxV, targets_BxT):
    logp = jax.nn.log_softmax(jnp.asarray(logits_BxTxV, jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
    return np.asarray(nll, np.float64), np.asarray(jnp.argmax(logits_BxTxV, axis=-1))


def held_out_windows(loaded: LoadedModel, text: str | None = None,
                     max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token targets ``[n, max_seq_len]`` of the held-out split in
    consecutive windows (at most ``max_windows``). Raises ``ValueError`` without a
    tokenizer, for ``max_windows < 1`` or a text shorter than one window."""
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.cfg.name}: evaluation needs a tokenizer and text")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, not {max_windows}")
    _, val_text = split_text(text if text is not None else model_text(loaded)[0])
    data = np.asarray(loaded.tokenizer.encode(val_text), np.int32)
    length = loaded.cfg.max_seq_len
    n = (len(data) - 1) // length
    if n < 1:
        raise ValueError(f"the held-out text ({len(data)} tokens) is shorter than one window "
                         f"of the model's context ({length} + 1 tokens)")
    if max_windows is not None:
        n = min(n, max_windows)
    inputs = np.stack([data[i * length:(i + 1) * length] for i in range(n)])
    targets = np.stack([data[i * length + 1:(i + 1) * length + 1] for i in range(n)])
    return inputs, targets


def evaluate(loaded: LoadedModel, im: IntModel, text: str | None = None,
             max_windows: int | None = None, batch: int = 16, progress: bool = False,
             baseline: IntModel | None = None) -> EvalResult:
    """Float and integer perplexity and top-1 agreement on the held-out split, in
    windows of the model's context; with ``baseline`` also its perplexity and its top-1
    agreement with ``im``. Raises ``ValueError`` for ``max_windows < 1`` or a held-out
    text shorter than one window."""
    inputs, targets = held_out_windows(loaded, text, max_windows)
    n = len(inputs)
    f_nll, i_nll, agree, b_nll, b_agree = [], [], [], [], []
    batches = range(0, n, batch)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="eval", unit="batch")
    for b in batches:
        x, y = jnp.asarray(inputs[b:b + batch]), jnp.asarray(targets[b:b + batch])
        fl = _float_logits(loaded.params, x, loaded.cfg)
        il = int_forward(im.qm, x, im.cfg)
        fn, fa = _nll_and_argmax(fl, y)
        inn, ia = _nll_and_argmax(np.asarray(il, np.float64) * im.scales.logits, y)
        f_nll.append(fn.ravel())
        i_nll.append(inn.ravel())
        agree.append((fa == ia).ravel())
        if baseline is not None:
            bl = int_forward(baseline.qm, x, baseline.cfg)
            bn, ba = _nll_and_argmax(np.asarray(bl, np.float64) * baseline.scales.logits, y)
            b_nll.append(bn.ravel())
            b_agree.append((ba == ia).ravel())
    f_nll, i_nll, agree = (np.concatenate(a) for a in (f_nll, i_nll, agree))
    extra = {}
    if baseline is not None:
        extra = {"baseline_weights": baseline.weights,
                 "baseline_ppl": math.exp(np.concatenate(b_nll).mean()),
                 "top1_agreement_vs_baseline": float(np.concatenate(b_agree).mean())}
    return EvalResult(tokens=int(f_nll.size), float_ppl=math.exp(f_nll.mean()),
                      int_ppl=math.exp(i_nll.mean()), top1_agreement=float(agree.mean()),
                      weights=im.weights, **extra)


@dataclass(frozen=True)
class KVEvalResult:
    kv: KVCompression
    tokens: int
    int_ppl: float                 # the integer model, its KV cache int8
    kv_ppl: float                  # the same model, its KV cache compressed
    top1_agreement_vs_int8_kv: float   # next-token argmax, compressed against int8 cache
    bits_share: dict[int, float]   # fraction of the full chunks' groups at each width
    mean_bits: float               # bits a value of the full chunks, codes only
    kv_bytes_ratio: float          # a window's KV bytes (codes, a byte a group; the rows of
    #                                its last, partial chunk int8) / int8 bytes
    group_bytes: float             # mean DRAM bytes of a compressed group (C values)

    def decode_step_bytes(self, cfg: ModelConfig, position: int) -> int:
        """KV bytes a decode step at ``position`` reads: the chunks full before it as
        compressed (at the mean group size), the rows of its own chunk as written."""
        C = self.kv.chunk_tokens
        packed = position // C * C
        row = 2 * cfg.n_layers * cfg.kv_dim                   # int8 K and V a token
        return round(row * (packed * self.group_bytes / C + position + 1 - packed))

    def to_dict(self) -> dict:
        return {"chunk_tokens": self.kv.chunk_tokens, "bits": list(self.kv.bits),
                "tolerance": self.kv.tolerance, "tokens": self.tokens,
                "int_ppl": self.int_ppl, "kv_ppl": self.kv_ppl,
                "top1_agreement_vs_int8_kv": self.top1_agreement_vs_int8_kv,
                "bits_share": {str(b): v for b, v in self.bits_share.items()},
                "mean_bits": self.mean_bits, "kv_bytes_ratio": self.kv_bytes_ratio}


def evaluate_kv(loaded: LoadedModel, im: IntModel, kv: KVCompression, text: str | None = None,
                max_windows: int | None = None, batch: int = 16) -> KVEvalResult:
    """The integer model with a compressed KV cache (``kv``), each held-out window decoded
    token by token as far as the cache goes (``integer.int_forward``), against the same
    model with its int8 cache. Bits are counted over the full chunks of every window's
    cache, each group (a channel of a chunk of K or V) once; the byte ratio covers the
    whole window, a last partial chunk as written. ``ValueError`` as
    ``held_out_windows``, and for chunks as long as the model's context (none would be read
    compressed)."""
    cfg = im.cfg
    if kv.chunk_tokens >= cfg.max_seq_len:
        raise ValueError(f"chunk_tokens {kv.chunk_tokens} is not shorter than "
                         f"{cfg.name}'s context of {cfg.max_seq_len} tokens: no query would "
                         f"read a compressed chunk")
    inputs, targets = held_out_windows(loaded, text, max_windows)
    i_nll, k_nll, agree, bits = [], [], [], []
    for b in range(0, len(inputs), batch):
        x, y = jnp.asarray(inputs[b:b + batch]), jnp.asarray(targets[b:b + batch])
        il = int_forward(im.qm, x, cfg)
        kl, kb = int_forward(im.qm, x, cfg, kv, with_kv_bits=True)
        inn, ia = _nll_and_argmax(np.asarray(il, np.float64) * im.scales.logits, y)
        kn, ka = _nll_and_argmax(np.asarray(kl, np.float64) * im.scales.logits, y)
        i_nll.append(inn.ravel())
        k_nll.append(kn.ravel())
        agree.append((ia == ka).ravel())
        bits.append(np.asarray(kb).ravel())
    bits = np.concatenate(bits)
    share = {b: float((bits == b).mean()) if bits.size else 0.0 for b in kv.bits}
    mean_bits = sum(b * f for b, f in share.items())
    # bytes over the whole cache: full chunks as compressed (a header byte a group), the
    # rows of a window's last, partial chunk as written
    full = cfg.max_seq_len // kv.chunk_tokens * kv.chunk_tokens
    group = sum(N.kv_chunk_bytes(b, kv.chunk_tokens) * f for b, f in share.items())
    ratio = (full * group / kv.chunk_tokens + (cfg.max_seq_len - full)) / cfg.max_seq_len
    i_nll, k_nll = np.concatenate(i_nll), np.concatenate(k_nll)
    return KVEvalResult(kv, int(i_nll.size), math.exp(i_nll.mean()), math.exp(k_nll.mean()),
                        float(np.concatenate(agree).mean()), share, mean_bits, ratio, group)


def generate_float(loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    cfg = loaded.cfg
    _check_length(cfg, len(prompt_ids), max_new_tokens)
    cache = init_cache(cfg)
    logits, cache = prefill(loaded.params, cache, jnp.asarray(prompt_ids, jnp.int32), cfg)
    step = jax.jit(partial(decode_step, cfg=cfg))
    out = [int(jnp.argmax(logits[-1]))]
    for pos in range(len(prompt_ids), len(prompt_ids) + max_new_tokens - 1):
        logits, cache = step(loaded.params, cache, out[-1], pos)
        out.append(int(jnp.argmax(logits)))
    return out


def generate_int(im: IntModel, prompt_ids: list[int], max_new_tokens: int,
                 kv: KVCompression | None = None) -> list[int]:
    """Greedy tokens of the integer model (with ``kv``, its KV cache compressed)."""
    cfg = im.cfg
    _check_length(cfg, len(prompt_ids), max_new_tokens)
    cache = init_int_cache(cfg)
    logits, cache = int_prefill(im.qm, cache, prompt_ids, cfg, kv)
    out = [int(jnp.argmax(logits[-1]))]
    for pos in range(len(prompt_ids), len(prompt_ids) + max_new_tokens - 1):
        logits, cache = int_decode_step(im.qm, cache, out[-1], pos, cfg, kv)
        out.append(int(jnp.argmax(logits)))
    return out


def _check_length(cfg: ModelConfig, prompt_len: int, max_new_tokens: int) -> None:
    if prompt_len == 0:
        raise ValueError("the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if prompt_len + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({prompt_len} tokens) plus {max_new_tokens} new tokens exceeds "
                         f"the model's context of {cfg.max_seq_len} tokens")
