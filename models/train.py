"""Training of the project's own models (``tiny``, ``tiny-bpe``) on a local text corpus.

Contract
--------
``train(TrainConfig)`` trains a model from ``init_params`` with AdamW (optax) on random
windows of the training split, shows progress with tqdm, and writes a Hugging Face style
checkpoint plus ``tokenizer.json`` into the output folder every ``save_every`` steps and
at the end, so an interrupted run keeps its last saved weights. The weights saved are
those of the lowest validation loss so far (evaluated every ``eval_every`` steps on the
held-out split): a small model on a small corpus overfits (tiny-bpe's validation loss
rises after ~1,000 steps of 4,096 tokens), and the checkpoint keeps its best point. The
tokenizer is a character table of the corpus (``tokenizer="char"``) or a byte-level BPE
that the ``tokenizers`` library trains on the training split to the model's
``vocab_size`` (``tokenizer="bpe"``, ``HFTokenizer.train``); the model's vocabulary is
the tokenizer's. The last ``val_fraction`` of the text is held out; ``split_text`` is
the one definition of that split, also used by evaluation and calibration. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from models.config import ModelConfig, preset
from models.reference import forward, init_params
from models.tokenizer import CharTokenizer, HFTokenizer
from models.weights import save_checkpoint

VAL_FRACTION = 0.1


def default_corpus() -> Path:
    """``../shared/data/tinyshakespeare.txt`` beside the checkout."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def split_text(text: str, val_fraction: float = VAL_FRACTION) -> tuple[str, str]:
    """Training text and the held-out last ``val_fraction`` of it."""
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


@dataclass(frozen=True)
class TrainConfig:
    corpus: Path = field(default_factory=default_corpus)
    out_dir: Path = Path("build/tiny-train")
    model: ModelConfig = field(default_factory=lambda: preset("tiny"))
    steps: int = 2500
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 250
    save_every: int = 500
    eval_batches: int = 8
    save_dtype: str = "float16"
    tokenizer: str = "char"         # "char" or "bpe"


def cross_entropy(params, tokens_BxT1, cfg: ModelConfig):
    """Mean next-token cross entropy (nats) of a batch of windows of T+1 tokens."""
    inputs, targets = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
    logits = jax.vmap(lambda t: forward(params, t, cfg))(inputs)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


def sample_windows(data: np.ndarray, rng: np.random.Generator, batch: int, length: int):
    starts = rng.integers(0, len(data) - length, size=batch)
    return np.stack([data[s:s + length] for s in starts])


def evaluate_loss(params, data: np.ndarray, cfg: ModelConfig, seq_len: int, n_batches: int,
                  batch_size: int, seed: int = 1234) -> float:
    loss_fn = jax.jit(lambda p, b: cross_entropy(p, b, cfg))
    rng = np.random.default_rng(seed)
    losses = [float(loss_fn(params, sample_windows(data, rng, batch_size, seq_len + 1)))
              for _ in range(n_batches)]
    return float(np.mean(losses))


#: The files ``train`` writes into its output folder.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "train_log.json")


def check_out_dir(out: Path) -> None:
    """``ValueError`` for an output folder ``train`` must not write into: a file, or a
    folder holding anything but a checkpoint it wrote (``train_log.json`` and the other
    ``CHECKPOINT_FILES``, the weights possibly in shards, which a new run replaces)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: not a folder (the checkpoint's output folder)")
    if out.is_dir():
        present = {p.name for p in out.iterdir()}
        others = {name for name in present - set(CHECKPOINT_FILES)
                  if not (name.startswith("model") and ".safetensors" in name)}   # shards
        if present and ("train_log.json" not in present or others):
            raise ValueError(f"{out}: is not empty and not a checkpoint written by accel "
                             f"train; give a new or empty folder")


def train(tc: TrainConfig, progress: bool = True) -> dict:
    for name in ("steps", "batch_size", "seq_len"):
        if getattr(tc, name) < 1:
            raise ValueError(f"{name} must be at least 1, not {getattr(tc, name)}")
    if not 0 < tc.lr < float("inf"):
        raise ValueError(f"lr must be a positive finite number, not {tc.lr}")
    if tc.tokenizer not in ("char", "bpe"):
        raise ValueError(f"tokenizer must be 'char' or 'bpe', not {tc.tokenizer!r}")
    if tc.seq_len > tc.model.max_seq_len:
        raise ValueError(f"seq_len {tc.seq_len} exceeds the model's max_seq_len "
                         f"{tc.model.max_seq_len}")
    out = Path(tc.out_dir)
    check_out_dir(out)
    try:
        text = Path(tc.corpus).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"corpus {tc.corpus}: cannot be read as text "
                         f"({getattr(e, 'strerror', None) or e})") from None
    if not text:
        raise ValueError(f"corpus {tc.corpus}: empty")
    train_text, val_text = split_text(text)
    tokenizer = (CharTokenizer.from_text(text) if tc.tokenizer == "char"
                 else HFTokenizer.train([train_text], tc.model.vocab_size))
    cfg = tc.model.replace(vocab_size=tokenizer.vocab_size)
    train_data = np.asarray(tokenizer.encode(train_text), np.int32)
    val_data = np.asarray(tokenizer.encode(val_text), np.int32)
    shortest = min(len(train_data), len(val_data))
    if shortest <= tc.seq_len + 1:
        raise ValueError(f"corpus {tc.corpus}: its training and held-out splits have "
                         f"{len(train_data):,} and {len(val_data):,} tokens; each needs more "
                         f"than a window of seq_len + 1 = {tc.seq_len + 1}")

    params = init_params(cfg, tc.seed)
    # a tenth of the steps (at most warmup_steps), and at least one step of decay after it
    warmup = min(tc.warmup_steps, max(1, tc.steps // 10), tc.steps - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.lr, warmup, tc.steps,
                                                  end_value=tc.lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(schedule, weight_decay=tc.weight_decay))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(cross_entropy)(params, batch, cfg)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(tc.seed)
    history = []
    val_loss = math.nan

    best = {"step": 0, "val_loss": math.inf, "params": params}

    def save(step_no):
        save_checkpoint(out, best["params"], cfg, dtype=np.dtype(tc.save_dtype))
        tokenizer.save(out / "tokenizer.json")
        (out / "train_log.json").write_text(json.dumps(
            {"step": best["step"], "val_loss": best["val_loss"], "steps_run": step_no,
             "corpus": corpus, "history": history}, indent=1) + "\n")

    # the text calibration and evaluation read (``zoo.trained_on``): none recorded for the
    # default corpus, which is found wherever the checkout is (a checkpoint copied to
    # another machine would name a path that is not there)
    corpus = Path(tc.corpus).resolve()
    corpus = None if corpus == default_corpus().resolve() else str(corpus)
    bar = tqdm(range(1, tc.steps + 1), desc="train", disable=not progress)
    saved = i = 0                    # the best step written, the step running
    try:
        for i in bar:
            batch = sample_windows(train_data, rng, tc.batch_size, tc.seq_len + 1)
            params, opt_state, loss = step(params, opt_state, batch)
            if i % tc.eval_every == 0 or i == tc.steps:
                val_loss = evaluate_loss(params, val_data, cfg, tc.seq_len, tc.eval_batches,
                                         tc.batch_size)
                if not math.isfinite(val_loss):
                    raise ValueError(f"training diverged: validation loss {val_loss} at step "
                                     f"{i} (lr {tc.lr:g}; a lower rate trains)")
                history.append({"step": i, "train_loss": float(loss), "val_loss": val_loss})
                bar.set_postfix(loss=f"{float(loss):.3f}", val=f"{val_loss:.3f}")
                if val_loss < best["val_loss"]:
                    best = {"step": i, "val_loss": val_loss, "params": params}
            if i % tc.save_every == 0 or i == tc.steps:
                save(i)
                saved = best["step"]
    except KeyboardInterrupt:
        if best["step"] > saved:     # an evaluated point not written yet: kept
            save(i - 1)
        raise
    return {"val_loss": best["val_loss"], "best_step": best["step"], "history": history,
            "out_dir": str(out)}
