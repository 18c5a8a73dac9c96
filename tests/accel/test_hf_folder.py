"""A Hugging Face folder as users bring one, through the command line: Llama 3.1 rope
scaling, a head width that does not divide the hidden size, a vocabulary padded beyond
its BPE tokenizer, bfloat16 weights in shards, and the same folder without a tokenizer."""

import json
import shutil

import ml_dtypes
import pytest

from accel.cli import main
from models.config import ModelConfig, RopeScaling
from models.reference import init_params
from models.tokenizer import HFTokenizer
from models.weights import save_checkpoint

VOCAB = 320              # the model's (padded) vocabulary; the BPE has 282 tokens


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    cfg = ModelConfig(name="hf-small", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=3,
                      n_kv_heads=1, head_dim=32, d_ff=96, max_seq_len=64, rope_theta=500.0,
                      rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 32))
    root = tmp_path_factory.mktemp("hf")
    with_tok = save_checkpoint(root / "with-tokenizer", init_params(cfg, seed=9), cfg,
                               dtype=ml_dtypes.bfloat16, shard_bytes=30_000)
    HFTokenizer.train(["to be or not to be, that is the question"] * 20, 300).save(
        with_tok / "tokenizer.json")
    without = root / "without-tokenizer"
    shutil.copytree(with_tok, without)
    (without / "tokenizer.json").unlink()
    return with_tok, without


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_reads_the_bpe_and_decodes_padded_ids(capsys, folders):
    with_tok, _ = folders
    code, out, err = run(capsys, "generate", "--model", with_tok, "--prompt", "to be",
                         "--max-new-tokens", "6")
    assert code == 0, err
    float_part, int_part = out.split("[integer] ")
    assert float_part.startswith("[float]   <s>to be") and int_part.startswith("<s>to be")


def test_compile_and_run_with_the_tokenizer_and_with_token_ids(capsys, folders, tmp_path):
    with_tok, without = folders
    code, _, err = run(capsys, "compile", "--model", with_tok, "--hw", "edge-8x8",
                       "--prompt", "to be", "--max-new-tokens", "3", "-o", tmp_path / "a")
    assert code == 0, err
    code, out, err = run(capsys, "run", tmp_path / "a", "--sim", "isa")
    assert code == 0 and out.startswith("<s>to be["), err
    # Without a tokenizer: a text prompt is refused naming --prompt-ids; ids compile.
    code, _, err = run(capsys, "compile", "--model", without, "-o", tmp_path / "b")
    assert code == 2 and "no tokenizer.json to read a text prompt" in err
    assert "--prompt-ids" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "compile", "--model", without, "--prompt-ids", "0,5,319",
                       "--max-new-tokens", "3", "-o", tmp_path / "b")
    assert code == 0, err
    code, out, err = run(capsys, "run", tmp_path / "b", "--sim", "isa")
    assert code == 0 and out.startswith("generated tokens: ["), err
    code, _, err = run(capsys, "compile", "--model", without, "--prompt-ids", "320",
                       "-o", tmp_path / "c")
    assert code == 2 and "prompt token id 320 is outside the vocabulary" in err


def test_no_weights_compiles_from_the_folders_config(capsys, folders, tmp_path):
    _, without = folders
    code, out, err = run(capsys, "compile", "--model", without, "--no-weights",
                         "--decode-at", "40", "-o", tmp_path / "t")
    assert code == 0, err
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["with_weights"] is False and manifest["model"]["head_dim"] == 32
    assert manifest["model"]["rope_scaling"]["rope_type"] == "llama3"
    assert [p["start"] for p in manifest["programs"]] == [40]


def test_verify_runs_the_ladder_on_token_ids(capsys, folders):
    _, without = folders
    code, out, err = run(capsys, "verify", "--model", without, "--prompt-ids", "7,8,9",
                         "--max-new-tokens", "3", "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["isa_vs_int"]["bit_exact"] and report["isa_vs_int_prefetch_off"]["bit_exact"]
    assert report["isa_vs_int"]["tokens_compared"] == 3
    code, _, err = run(capsys, "verify", "--model", without, "--prompt", "hi")
    assert code == 2 and "no tokenizer.json to read a text prompt" in err


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(capsys, folders, tmp_path):
    with_tok, _ = folders
    cfg = ModelConfig.from_hf_json(with_tok / "config.json").replace(vocab_size=280)
    small = save_checkpoint(tmp_path / "small-vocab", init_params(cfg, seed=1), cfg)
    shutil.copy(with_tok / "tokenizer.json", small / "tokenizer.json")
    code, _, err = run(capsys, "generate", "--model", small, "--prompt-ids", "1")
    assert code == 2 and "tokenizer.json: 282 tokens, more than config.json's vocab_size " \
                         "of 280" in err, err
