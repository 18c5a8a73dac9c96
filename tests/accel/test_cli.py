"""The accel command line: results as JSON, user errors as one line with exit status 2."""

import json
import re
from pathlib import Path

import pytest

from accel.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:             # refused as it was parsed
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_reports_both_perplexities(capsys):
    code, out, _ = run(capsys, "eval", "--model", "tiny", "--max-windows", "2", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["tokens"] == 512
    assert result["float_ppl"] > 1 and result["int_ppl"] > 1
    assert 0.9 <= result["top1_agreement"] <= 1.0


def test_eval_json_reports_the_compressed_kv_cache(capsys):
    code, out, _ = run(capsys, "eval", "--model", "tiny", "--max-windows", "2", "--json",
                       "--kv-tolerance", "32", "--kv-bits", "2,8")
    assert code == 0
    kv = json.loads(out)["kv_compression"]
    assert kv["tokens"] == 512 and kv["bits"] == [2, 8] and kv["tolerance"] == 32
    assert set(kv["bits_share"]) == {"2", "8"} and 0 < kv["kv_bytes_ratio"] < 1.0625
    assert kv["kv_ppl"] > 1 and 0.5 <= kv["top1_agreement_vs_int8_kv"] <= 1.0


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "--kv-tolerance", "-1"], "--kv-tolerance: tolerance must be a number in"),
    (["eval", "--kv-tolerance", "8", "--kv-bits", "3"], "--kv-bits: bits must be a non-empty"),
    (["eval", "--kv-tolerance", "8", "--kv-bits", "4,,8"], "--kv-bits '4,,8': widths"),
    (["eval", "--kv-tolerance", "8", "--kv-chunk-tokens", "0"],
     "--kv-chunk-tokens: chunk_tokens must be an integer"),
    (["eval", "--kv-bits", "2,4"], "--kv-bits needs --kv-tolerance"),
    (["eval", "--kv-tolerance", "8", "--kv-bits", ""], "--kv-bits '': widths"),
    (["eval", "--kv-tolerance", "8", "--kv-bits", "8,8"], "each once"),
    (["eval", "--kv-tolerance", "8", "--kv-chunk-tokens", "256", "--max-windows", "1"],
     "--kv-chunk-tokens 256 is not shorter than tiny's context of 256 tokens"),
    (["eval", "--model", "gpt-17"], "unknown model preset 'gpt-17'"),
    (["eval", "--model", "/nonexistent/folder"], "/nonexistent/folder: no such checkpoint"),
    (["eval", "--model", "README.md"], "README.md: not a checkpoint folder"),
    (["generate", "--prompt", "ROMEO:", "--max-new-tokens", "400"], "exceeds the model's context"),
    (["generate", "--prompt", "naïve"], "'ï' is not in the tokenizer's alphabet"),
    (["generate", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, not 0"),
    (["generate", "--numerics", "float", "--kv-tolerance", "32"],
     "--kv-tolerance compresses the integer model's KV cache"),
    (["generate", "--kv-chunk-tokens", "8"], "--kv-chunk-tokens needs --kv-tolerance"),
    (["generate", "--numerics", "int", "--kv-tolerance", "32", "--max-new-tokens", "8"],
     "--kv-chunk-tokens 16: a 6-token prompt and 8 new tokens never read a full chunk"),
    (["generate", "--max-new-tokens", "-3", "--numerics", "int"], "at least 1, not -3"),
    (["eval", "--max-windows", "0"], "argument --max-windows: must be at least 1, not 0"),
    (["verify", "--batch", "0"], "--batch must be 1 to 256 (compiler.driver.MAX_BATCH), not 0"),
    (["verify", "--batch", "3", "--max-new-tokens", "240", "--eval-windows", "1"],
     "--batch 3: the longest sequence"),
    (["verify", "--batch", "1000000000"], "--batch must be 1 to 256"),
    (["verify", "--batch", "200"], "--batch 200: the longest sequence"),
    (["verify", "--batch", "2", "--max-new-tokens", "1"], "needs --max-new-tokens of at least"),
    # the option as given, not the keyword it becomes (--eval-windows said max_windows)
    (["verify", "--eval-windows", "0"], "argument --eval-windows: must be at least 1, not 0"),
    # past the context: before rung 1 (it was refused by the compiler after it)
    (["verify", "--max-new-tokens", "100000"],
     "--max-new-tokens 100000 leaves no room for a prompt in tiny's context of 256 tokens"),
    (["verify", "--max-new-tokens", "251"],
     "--max-new-tokens 251: the prompt (6 tokens) plus the new tokens is longer than tiny's"),
    (["verify", "--kv-chunk-tokens", "0"], "--kv-chunk-tokens needs --kv-tolerance"),
    (["verify", "--kv-bits", ""], "--kv-bits needs --kv-tolerance"),
    (["verify", "--kv-tolerance", "32", "--kv-chunk-tokens", "8"],
     "--kv-chunk-tokens 8: the device compresses whole KV blocks, kv_block_tokens = 16"),
    (["verify", "--kv-bits", "2"], "--kv-bits needs --kv-tolerance"),
    (["compile", "--model", "tiny", "--no-weights", "--decode-at", "-1"],
     "the position must be at least 0"),
    (["compile", "--decode-at", "5"], "--decode-at needs --no-weights"),
    (["compile", "--no-weights", "--prompt", "x"],
     "--prompt, --prompt-ids and --max-new-tokens need"),
    (["compile", "--no-weights", "--prompt-ids", "1"], "--max-new-tokens need weights"),
    (["generate", "--prompt-ids", "1,x"], "--prompt-ids: 'x' is not a token id"),
    (["generate", "--prompt-ids", "1,,2"], "--prompt-ids: '1,,2' has an empty id"),
    (["generate", "--prompt-ids", "2,"], "--prompt-ids: '2,' has an empty id"),
    (["generate", "--prompt-ids", " "], "--prompt-ids is empty"),
    (["generate", "--prompt-ids", "1_0"], "--prompt-ids: '1_0' is not a token id"),
    (["generate", "--prompt-ids", "-3"], "--prompt-ids: '-3' is not a token id"),
    (["generate", "--prompt-ids", "1,65"], "prompt token id 65 is outside the vocabulary"),
    (["generate", "--prompt-ids", "1", "--prompt", "a"], "not both"),
    (["compile", "-o", "docs"], "is not empty and not a build folder"),
    (["verify", "--prompt", ""], "the prompt is empty"),
    (["compile", "-o", "README.md/x"], "README.md/x"),
    (["train", "--steps", "0"], "argument --steps: must be at least 1, not 0"),
    (["train", "--seq-len", "100000"], "--seq-len 100000 is longer than tiny's context"),
    # only the project's own models train (qwen2.5-0.5b reached 20 GB before a step)
    (["train", "--model", "qwen2.5-0.5b", "--steps", "1"],
     "argument --model: invalid choice: 'qwen2.5-0.5b' (choose from 'tiny', 'tiny-bpe')"),
    (["train", "--model", "tiny-bpe", "--tokenizer", "char"],    # (it trained a char model)
     "--tokenizer char: --model tiny-bpe is trained with the bpe tokenizer"),
    (["train", "--lr", "1e9", "--steps", "2", "--quiet", "--out", "/tmp/accel-test-diverged"],
     "training diverged: validation loss"),
    (["train", "--corpus", "/nonexistent/corpus.txt"],
     "corpus /nonexistent/corpus.txt: cannot be read as text (No such file or directory)"),
    (["train", "--out", "README.md"], "argument --out: README.md: it is a file, not a folder"),
    # refused before training (it trained, then failed to save)
    (["train", "--out", "README.md/run"],
     "argument --out: README.md/run: README.md is a file, not a folder"),
    (["rtl", "verilog", "-o", "README.md/v"],
     "argument -o/--out: README.md/v: README.md is a file, not a folder"),
    (["train", "--out", "docs"], "docs: is not empty and not a checkpoint written by accel"),
    (["train", "--out", ""], "argument --out: an empty path"),
    (["compile", "-o", ""], "argument -o/--out: an empty path"),   # (it built into .)
    (["report", ""], "argument out: an empty path"),
    (["compile", "-o", " "], "argument -o/--out: ' ' is only spaces"),   # (a folder " ")
    # a folder of other files (it wrote beside them, over any of the same name)
    (["rtl", "verilog", "-o", "docs"], "docs: holds files other than the Verilog this writes"),
    # a batch past the machine's memory: refused by a lower bound (it swapped for minutes),
    # or where XLA cannot allocate, by its error (it was a traceback)
    (["train", "--batch-size", "100000000"], "--batch-size 100000000 of 256-token windows "
     "needs at least 12,589 GiB"),
    # (on a machine of less than ~13 GiB, by the bound)
    (["train", "--batch-size", "100000", "--steps", "1", "--quiet"],
     "--batch-size 100000 of 256-token windows "),
    (["train", "--lr", "nan"], "lr must be a positive finite number, not nan"),
    (["generate", "--weights", "mxint4", "--numerics", "float"],
     "--weights mxint4 is the integer model's; --numerics float"),
    (["compile", "--model", "llama-3-8b", "--no-weights", "--weights", "mxint4"],
     "llama-3-8b model.layers.0.mlp.down_proj.weight: reduction length 14336 exceeds 8192"),
    (["eval", "--model", "llama-3-8b", "--weights", "mxint4"],     # before loading 8B weights
     "llama-3-8b model.layers.0.mlp.down_proj.weight: reduction length 14336 exceeds 8192"),
    (["eval", "--model", "llama-3-8b"],                  # a preset: before its random weights
     "llama-3-8b: evaluation needs a tokenizer and text"),
    (["report", "README.md"], "README.md: not a folder (a sweep's output folder)"),
    # a folder that cannot be made: the path and the reason (it was "[Errno 2] ...")
    (["compile", "--no-weights", "-o", "/proc/accel-test/x"],
     "accel compile: error: /proc/accel-test: No such file or directory"),
    # an unknown option before any command was reported as a missing command
    (["--nope"], "accel: error: unrecognized arguments: --nope"),
    ([], "a command is needed: one of train, eval, generate,"),
    (["generate", "--model", "llama-3-8b"],      # the default text prompt, before the weights
     "llama-3-8b: no tokenizer.json to read a text prompt"),
    (["compile", "--model", "llama-3-8b", "--prompt", "hi"],
     "llama-3-8b: no tokenizer.json to read a text prompt"),
    (["verify", "--model", "llama-3-8b", "--prompt", "hi"],
     "llama-3-8b: no tokenizer.json to read a text prompt"),
])
def test_user_errors_are_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_compile_refuses_its_folder_before_it_compiles(capsys, tmp_path, monkeypatch):
    """``accel compile -o FOLDER`` with a folder holding other files is refused before the
    model is compiled (it compiled tiny first, then refused to write); a build folder is
    compiled into."""
    import compiler.driver

    (tmp_path / "notes.txt").write_text("mine")

    def compiled(*args, **kwargs):
        raise AssertionError("compiled before the folder was checked")

    monkeypatch.setattr(compiler.driver, "compile_generation", compiled)
    monkeypatch.setattr(compiler.driver, "compile_timing_step", compiled)
    for argv in (("compile", "-o", str(tmp_path)),
                 ("compile", "--no-weights", "-o", str(tmp_path))):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "is not empty and not a build folder" in err, err
        assert "notes.txt" in err and "compiled before" not in err


def test_train_says_it_replaces_an_earlier_checkpoint(capsys, tmp_path):
    """A run into a folder holding a checkpoint says that it replaces it (it did so
    without a word); a run into a new folder says nothing of the kind."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 50)
    argv = ("train", "--steps", "1", "--quiet", "--seq-len", "16", "--batch-size", "2",
            "--corpus", str(corpus), "--out", str(tmp_path / "ck"))
    code, _, err = run(capsys, *argv)
    assert code == 0 and "replaces" not in err
    # (trained on the default corpus: none recorded, so the checkpoint finds it anywhere)
    code, _, _ = run(capsys, *argv[:-4], "--out", str(tmp_path / "default"))
    assert code == 0 and json.loads((tmp_path / "default" / "train_log.json").read_text())[
        "corpus"] is None
    code, _, err = run(capsys, *argv)
    assert code == 0 and err.strip() == (f"{tmp_path / 'ck'}: holds a checkpoint, which this "
                                         f"run replaces when it first saves")


def test_a_model_trained_on_another_text_is_calibrated_and_evaluated_on_it(capsys,
                                                                           tmp_path):
    """A checkpoint records its training corpus; its integer model is calibrated, and
    evaluated, on that text's splits (calibration read the default corpus, whose letters
    a model trained on digits does not have: --numerics both failed); a corpus moved away
    is named."""
    corpus = tmp_path / "digits.txt"
    corpus.write_text("3141592653 5897932384 6264338327 9502884197 1693993751 " * 80)
    ck = tmp_path / "digits"
    code, _, err = run(capsys, "train", "--steps", "2", "--quiet", "--seq-len", "32",
                       "--batch-size", "2", "--corpus", str(corpus), "--out", str(ck))
    assert code == 0, err
    assert json.loads((ck / "train_log.json").read_text())["corpus"] == str(corpus.resolve())
    code, out, err = run(capsys, "generate", "--model", str(ck), "--prompt", "31",
                         "--max-new-tokens", "4")
    assert code == 0, err
    assert out.startswith("[float]   31") and "[integer] 31" in out
    code, out, err = run(capsys, "eval", "--model", str(ck), "--max-windows", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["tokens"] == 256           # one window of tiny's context
    corpus.rename(tmp_path / "moved.txt")
    # the float model needs no calibration (it was refused too)
    code, out, err = run(capsys, "generate", "--model", str(ck), "--prompt", "31",
                         "--max-new-tokens", "4", "--numerics", "float")
    assert code == 0 and out.startswith("[float]   31") and "[integer]" not in out, err
    code, _, err = run(capsys, "generate", "--model", str(ck), "--prompt", "31")
    assert code == 2 and err == (f"accel generate: error: {ck}: its training corpus {corpus} "
                                 f"(train_log.json) cannot be read as text (No such file or "
                                 f"directory); move the text back or retrain\n")


def test_a_large_model_says_what_it_is_doing(capsys, monkeypatch):
    """A model past ``PHASE_PARAMS`` says on stderr what each long phase is (a 0.5B
    preset's generate printed nothing for over a minute); the small models say nothing."""
    import accel.cli

    argv = ("generate", "--prompt-ids", "1,2", "--max-new-tokens", "2", "--numerics", "int")
    code, _, err = run(capsys, *argv)
    assert code == 0 and err == ""
    monkeypatch.setattr(accel.cli, "PHASE_PARAMS", 0)
    code, out, err = run(capsys, *argv)
    assert code == 0 and out.startswith("[integer]")
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.endswith(" ...") for line in lines)
    assert re.fullmatch(r"tiny: loading \d+M parameters \.\.\.", lines[0])   # (trained)
    assert lines[1].startswith("tiny: calibrating the integer model's scales")
    assert lines[2] == "tiny: generating 2 tokens ..."


def test_generate_prints_float_and_integer_text(capsys):
    code, out, _ = run(capsys, "generate", "--prompt", "ROMEO:", "--max-new-tokens", "16")
    assert code == 0
    float_part, int_part = out.split("[integer] ")
    assert float_part.startswith("[float]   ROMEO:") and int_part.startswith("ROMEO:")
    assert len(int_part.rstrip("\n")) == len("ROMEO:") + 16


def test_generate_with_a_compressed_kv_cache(capsys, tiny_model, tiny_int):
    """``--kv-tolerance``: the integer model's text with its KV cache compressed chunk by
    chunk (``generate_int(..., kv)``, here not the int8 cache's text), labelled with the
    tolerance."""
    from models.evaluate import generate_int
    from models.integer import KVCompression

    prompt = "ROMEO:\nWhat say you to this? I will not"
    code, out, _ = run(capsys, "generate", "--prompt", prompt, "--max-new-tokens", "24",
                       "--numerics", "int", "--kv-tolerance", "512", "--kv-chunk-tokens", "8",
                       "--kv-bits", "2,4")
    tok = tiny_model.tokenizer
    ids = tok.encode(prompt)
    compressed = generate_int(tiny_int, ids, 24, KVCompression(8, (2, 4), 512))
    assert compressed != generate_int(tiny_int, ids, 24)
    assert code == 0 and out == f"[integer, KV tolerance 512] {prompt}{tok.decode(compressed)}\n"


def test_compile_run_verify_tiny(capsys, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    code, text, _ = run(capsys, "compile", "--model", "tiny", "--hw", "configs/edge-8x8.toml",
                        "--prompt", "ROMEO:", "--max-new-tokens", "4", "-o", str(out))
    assert code == 0 and "decode_002" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["programs"][0]["opcodes"]["MATMUL"] > 0
    assert (out / "prefill.s").read_text().count("\n") > 10
    code, text, _ = run(capsys, "run", str(out), "--sim", "isa")
    assert code == 0 and text.startswith("ROMEO:[") and "dram_read_bytes" in text
    # --waves where the C++ compiler finds no lz4.h (Verilator's FST writer includes it):
    # refused by name before any build ("false" stands for a compiler that finds nothing)
    from rtl import sim
    real = sim.fst_refusal
    monkeypatch.setattr(sim, "fst_refusal", lambda: real("false"))
    code, _, err = run(capsys, "run", str(out), "--sim", "rtl", "--waves")
    assert code == 2 and "lz4.h" in err and len(err.strip().splitlines()) == 1, err
    code, text, _ = run(capsys, "verify", "--model", "tiny", "--hw", "edge-8x8",
                        "--max-new-tokens", "3", "--eval-windows", "2", "--json")
    report = json.loads(text)
    assert code == 0
    assert report["isa_vs_int"]["bit_exact"] is True
    assert report["isa_vs_int"]["tokens_compared"] == 3
    assert 0.9 <= report["int_vs_float"]["top1_agreement"] <= 1


def test_mxint4_weights_from_eval_to_a_build(capsys, tmp_path):
    """``--weights mxint4``: eval reports float, int8 and MXINT4 side by side; a compiled
    build says its format and runs on the ISA simulator (on the RTL: tests/rtl/
    test_tiny_rtl.py); the RTL refuses MXINT4 on an array taller than a block, by name."""
    code, out, _ = run(capsys, "eval", "--weights", "mxint4", "--max-windows", "2", "--json")
    result = json.loads(out)
    assert code == 0 and result["weights"] == "mxint4"
    assert result["int8_ppl"] < result["int_ppl"] < 1.10 * result["float_ppl"]
    assert 0.8 <= result["top1_agreement_vs_int8"] < 1
    out_dir = tmp_path / "mx"
    code, text, _ = run(capsys, "compile", "--weights", "mxint4", "--max-new-tokens", "3",
                        "-o", str(out_dir))
    assert code == 0 and "mxint4 weights" in text
    assert json.loads((out_dir / "manifest.json").read_text())["weights"] == "mxint4"
    assert "MATMUL" in (out_dir / "decode_000.s").read_text()
    code, text, _ = run(capsys, "run", str(out_dir), "--sim", "isa")
    assert code == 0 and text.startswith("ROMEO:[")
    tall = tmp_path / "tall.toml"
    tall.write_text((ROOT / "configs" / "edge-8x8.toml").read_text()
                    .replace('"edge-8x8"', '"tall"').replace("array_rows = 8", "array_rows = 64")
                    .replace("dram_bytes_per_cycle = 32", "dram_bytes_per_cycle = 64"))
    code, _, err = run(capsys, "verify", "--weights", "mxint4", "--rtl", "--hw", str(tall))
    assert code == 2 and "need array_rows <= MX_BLOCK = 32" in err and "64 rows" in err
    assert len(err.strip().splitlines()) == 1


def test_run_refuses_a_corrupted_program(capsys, tmp_path):
    out = tmp_path / "tiny"
    assert run(capsys, "compile", "--max-new-tokens", "2", "-o", str(out))[0] == 0
    data = bytearray((out / "prefill.bin").read_bytes())
    data[100] ^= 0xFF
    (out / "prefill.bin").write_bytes(bytes(data))
    code, _, err = run(capsys, "run", str(out))
    assert code == 2 and "prefill.bin: changed since it was compiled" in err


def test_prompt_longer_than_context(capsys, tmp_path):
    code, _, err = run(capsys, "compile", "--prompt", "x" * 250, "--max-new-tokens", "10",
                       "-o", str(tmp_path / "b"))
    assert code == 2 and "longer than the model's context of 256 tokens" in err


def test_eval_refuses_a_text_shorter_than_one_window(tiny_model, tiny_int):
    from models.evaluate import evaluate

    with pytest.raises(ValueError, match="shorter than one window"):
        evaluate(tiny_model, tiny_int, text="ROMEO:\n" * 100)


def test_verify_batch_runs_every_sequence_through_the_ladder(capsys):
    """``accel verify --batch 3 --kv-tolerance 32``: the rungs' keys as for one sequence,
    three sequences of different prompt lengths (the second reading the first's prefix
    block, compressed), the KV cache compressed chunk by chunk, every one bit-exact
    against its own integer reference run compressed alike."""
    code, out, _ = run(capsys, "verify", "--batch", "3", "--max-new-tokens", "3",
                       "--eval-windows", "1", "--kv-tolerance", "32", "--json")
    assert code == 0
    report = json.loads(out)
    kv = report["kv_compression"]
    assert kv["chunk_tokens"] == 16 and kv["tolerance"] == 32
    assert kv["blocks_compressed"] == 2 and kv["chunked_prefetches"] > 0
    batch = report["batch"]
    assert batch["new_tokens"] == [3, 2, 2] and batch["cached_tokens"][:2] == [0, 16]
    assert len(set(batch["prompt_tokens"])) == 3 and batch["shared_blocks"] == 1
    for key in ("isa_vs_int", "isa_vs_int_prefetch_off"):
        r = report[key]
        assert r["bit_exact"] and r["tokens_compared"] == 7 and len(r["sequences"]) == 3
    assert report["failed_rungs"] == []


def test_verify_exits_non_zero_when_any_rung_fails(capsys, monkeypatch):
    """Rung 1 below its bar (rungs 2 and 3 bit-exact): FAIL and exit status 1. With
    MXINT4 weights the bar is perplexity within 10%, top-1 agreement not judged."""
    import accel.ladder as ladder

    exact = {"bit_exact": True, "tokens_compared": 3, "logit_rows_compared": 3,
             "kv_equal": True}
    report = {"model": "tiny", "hardware": "edge-8x8", "weights": "int8", "isa_vs_int": exact,
              "isa_vs_int_prefetch_off": exact,
              "int_vs_float": {"top1_agreement": 0.80, "ppl_ratio": 1.01, "float_ppl": 4.0,
                               "int_ppl": 4.04, "tokens": 512}}
    monkeypatch.setattr(ladder, "verify_ladder", lambda *a, **k: dict(report))
    code, out, _ = run(capsys, "verify")
    assert code == 1 and "FAILED: int_vs_float" in out
    code, out, _ = run(capsys, "verify", "--json")
    assert code == 1 and json.loads(out)["failed_rungs"] == ["int_vs_float"]
    report["int_vs_float"]["top1_agreement"] = 0.97
    report["isa_vs_int_prefetch_off"] = {**exact, "bit_exact": False}
    code, out, _ = run(capsys, "verify")
    assert code == 1 and "FAILED: isa_vs_int_prefetch_off" in out
    report["isa_vs_int_prefetch_off"] = exact
    assert run(capsys, "verify")[0] == 0
    report["weights"] = "mxint4"
    report["int_vs_float"].update(top1_agreement=0.80, ppl_ratio=1.08)
    code, out, _ = run(capsys, "verify")
    assert code == 0 and "not judged" in out and "(bar +10%)" in out
    report["int_vs_float"]["ppl_ratio"] = 1.12
    assert run(capsys, "verify", "--json")[0] == 1


def test_an_accelerator_error_is_one_line(capsys, tmp_path, tiny_int):
    """A build (hashes intact) whose program loads from beyond the simulated DRAM (the
    image, then zeros up to the RTL's power-of-two capacity): one line naming the error
    code and the instruction, exit status 2."""
    from arch.hardware import load_hardware
    from compiler.driver import compile_generation
    from rtl.common import rtl_dram_bytes

    build = compile_generation(tiny_int.cfg, tiny_int.qm, load_hardware("edge-8x8"),
                               [3, 4, 5], 1)
    instrs = build.programs[0].instrs
    i = next(i for i, x in enumerate(instrs) if x.mnemonic == "DMA_LOAD")
    instrs[i] = instrs[i].replace(dram_addr=rtl_dram_bytes(build.mmap.size) + 4096)
    import numpy as np

    from compiler.asm import encode_program

    region = build.mmap["program:prefill"]
    build.image.data[region.offset:region.end] = np.frombuffer(encode_program(instrs), np.uint8)
    build.save(tmp_path / "bad")
    code, _, err = run(capsys, "run", str(tmp_path / "bad"))
    assert code == 2 and "DRAM_OUT_OF_RANGE" in err and f"instruction {i}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_demo_steps_are_command_lines_the_parser_accepts():
    """``accel demo`` runs its steps through the parser, so each is a real command line
    with the subcommand's own defaults (no hand-built namespaces)."""
    from accel.cli import build_parser, demo_steps

    steps = demo_steps(max_windows=3)
    parsed = [build_parser().parse_args(argv) for _, argv in steps]
    assert [a.command for a in parsed] == ["eval", "generate", "compile", "run", "verify",
                                           "sweep"]
    assert parsed[0].max_windows == 3 and parsed[4].rtl and parsed[5].fresh
    assert parsed[4].prompt is None and parsed[4].max_new_tokens == 8   # the defaults
