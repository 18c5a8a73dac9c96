"""Training writes a loadable checkpoint and lowers the loss; the packaged tiny model is
the trained one with its tokenizer."""

import json

import numpy as np

from models.config import ModelConfig
from models.tokenizer import HFTokenizer
from models.train import TrainConfig, split_text, train
from models.zoo import checkpoint_dir, load_model


def test_split_holds_out_the_last_tenth():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    train_text, val_text = split_text(text)
    assert train_text + val_text == text and len(val_text) == 100


def test_short_training_run_learns_and_saves(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 200)
    cfg = ModelConfig(name="mini", vocab_size=1, d_model=32, n_layers=1, n_heads=2,
                      n_kv_heads=1, head_dim=16, d_ff=64, max_seq_len=32)
    out = tmp_path / "ckpt"
    result = train(TrainConfig(corpus=corpus, out_dir=out, model=cfg, steps=60, batch_size=8,
                               seq_len=32, eval_every=30, save_every=30, eval_batches=2),
                   progress=False)
    history = result["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"] < np.log(15)
    log = json.loads((out / "train_log.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])       # the checkpoint is the best one
    assert log["steps_run"] == 60 and log["step"] == best["step"] == result["best_step"]
    assert log["val_loss"] == best["val_loss"] == result["val_loss"]
    loaded = load_model(str(out))
    assert loaded.cfg.vocab_size == loaded.tokenizer.vocab_size == 15
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("to be")) == "to be"


def test_packaged_tiny_checkpoint(tiny_model):
    cfg = tiny_model.cfg
    assert cfg.vocab_size == tiny_model.tokenizer.vocab_size == 65
    assert cfg.n_kv_heads < cfg.n_heads                      # grouped-query attention
    size = sum(p.stat().st_size for p in checkpoint_dir("tiny").iterdir())
    assert size <= 2 * 1024 * 1024


def test_a_bpe_training_run_trains_its_tokenizer_on_the_training_split(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 200 + "zyzzyva " * 30)
    cfg = ModelConfig(name="mini-bpe", vocab_size=290, d_model=32, n_layers=1, n_heads=2,
                      n_kv_heads=1, head_dim=16, d_ff=64, max_seq_len=32)
    out = tmp_path / "ckpt"
    train(TrainConfig(corpus=corpus, out_dir=out, model=cfg, steps=40, batch_size=8,
                      seq_len=32, eval_every=20, save_every=40, eval_batches=2,
                      tokenizer="bpe"), progress=False)
    loaded = load_model(str(out))
    tok = loaded.tokenizer
    assert isinstance(tok, HFTokenizer) and loaded.cfg.vocab_size == tok.vocab_size <= 290
    assert tok.decode(tok.encode("to be")) == "<s>to be"
    # The held-out tail ("zyzzyva") was not seen by the BPE trainer: it stays one token
    # per byte, while the training text's words merge.
    assert len(tok.encode("zyzzyva")) == 1 + len("zyzzyva")
    assert len(tok.encode("to be or not to be")) < len("to be or not to be") / 2


def test_packaged_tiny_bpe_checkpoint():
    loaded = load_model("tiny-bpe")
    cfg = loaded.cfg
    assert isinstance(loaded.tokenizer, HFTokenizer)
    assert cfg.vocab_size == loaded.tokenizer.vocab_size == 2048
    assert cfg.n_kv_heads == 1 and cfg.tie_embeddings          # multi-query, tied head
    size = sum(p.stat().st_size for p in checkpoint_dir("tiny-bpe").iterdir())
    assert size <= 4 * 1024 * 1024
    log = json.loads((checkpoint_dir("tiny-bpe") / "train_log.json").read_text())
    assert log["val_loss"] < log["history"][0]["val_loss"]


def test_a_one_step_run_trains_and_saves(tmp_path):
    """``--steps 1``: no step left for the cosine decay after a step of warmup failed in
    optax ("requires positive decay_steps"); the one step is taken at the peak rate."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 50)
    cfg = ModelConfig(name="one", vocab_size=1, d_model=16, n_layers=1, n_heads=2,
                      n_kv_heads=1, head_dim=8, d_ff=32, max_seq_len=16)
    result = train(TrainConfig(corpus=corpus, out_dir=tmp_path / "ckpt", model=cfg, steps=1,
                               batch_size=2, seq_len=16, eval_batches=1), progress=False)
    assert result["best_step"] == 1 and json.loads(
        (tmp_path / "ckpt" / "train_log.json").read_text())["steps_run"] == 1


def test_an_interrupted_run_keeps_its_best_point_and_folders_are_checked(tmp_path,
                                                                       monkeypatch):
    """Ctrl-C after an evaluation not yet saved writes that best point, then stops; a run
    into its own output folder replaces it; a file, a folder of other files and a corpus
    shorter than a window are refused before any step."""
    import pytest

    from models import train as T

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 50)
    cfg = ModelConfig(name="one", vocab_size=1, d_model=16, n_layers=1, n_heads=2,
                      n_kv_heads=1, head_dim=8, d_ff=32, max_seq_len=16)
    out = tmp_path / "ckpt"
    tc = TrainConfig(corpus=corpus, out_dir=out, model=cfg, steps=50, batch_size=2,
                     seq_len=16, eval_batches=1, eval_every=2, save_every=100)
    evaluate, calls = T.evaluate_loss, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:            # in step 6, after the evaluations at 2 and 4
            raise KeyboardInterrupt
        return evaluate(*args)

    monkeypatch.setattr(T, "evaluate_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tc, progress=False)
    log = json.loads((out / "train_log.json").read_text())
    assert log["step"] in (2, 4) and log["steps_run"] == 5
    assert load_model(str(out)).cfg.d_model == 16
    monkeypatch.setattr(T, "evaluate_loss", evaluate)
    assert train(TrainConfig(corpus=corpus, out_dir=out, model=cfg, steps=1, batch_size=2,
                             seq_len=16, eval_batches=1), progress=False)["best_step"] == 1
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.md").write_text("x")
    for where, message in [(corpus, "not a folder"),
                           (tmp_path / "notes", "is not empty and not a checkpoint")]:
        with pytest.raises(ValueError, match=message):
            train(TrainConfig(corpus=corpus, out_dir=where, model=cfg, steps=1, seq_len=16),
                  False)
    short = tmp_path / "short.txt"
    short.write_text("to be")
    with pytest.raises(ValueError, match="short.txt: its training and held-out splits have"):
        train(TrainConfig(corpus=short, out_dir=tmp_path / "s", model=cfg, steps=1,
                          seq_len=16), False)
    assert not (tmp_path / "s").exists()
    short.write_text("")             # (its empty vocabulary was named as the model's)
    with pytest.raises(ValueError, match="short.txt: empty"):
        train(TrainConfig(corpus=short, out_dir=tmp_path / "s", model=cfg, steps=1,
                          seq_len=16), False)
