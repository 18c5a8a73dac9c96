"""The accel command line: results as JSON, user errors as one line with exit status 2."""

import json

import pytest

from accel.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_reports_both_perplexities(capsys):
    code, out, _ = run(capsys, "eval", "--model", "tiny", "--max-windows", "2", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["tokens"] == 512
    assert result["float_ppl"] > 1 and result["int_ppl"] > 1
    assert 0.9 <= result["top1_agreement"] <= 1.0


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "--model", "gpt-17"], "unknown model preset 'gpt-17'"),
    (["eval", "--model", "/nonexistent/folder"], "unknown model preset"),
    (["generate", "--prompt", "ROMEO:", "--max-new-tokens", "400"], "exceeds the model's context"),
    (["generate", "--prompt", "naïve"], "'ï' is not in the tokenizer's alphabet"),
])
def test_user_errors_are_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_generate_prints_float_and_integer_text(capsys):
    code, out, _ = run(capsys, "generate", "--prompt", "ROMEO:", "--max-new-tokens", "16")
    assert code == 0
    float_part, int_part = out.split("[integer] ")
    assert float_part.startswith("[float]   ROMEO:") and int_part.startswith("ROMEO:")
    assert len(int_part.rstrip("\n")) == len("ROMEO:") + 16


def test_compile_run_verify_tiny(capsys, tmp_path):
    out = tmp_path / "tiny"
    code, text, _ = run(capsys, "compile", "--model", "tiny", "--hw", "configs/edge-8x8.toml",
                        "--prompt", "ROMEO:", "--max-new-tokens", "4", "-o", str(out))
    assert code == 0 and "decode_002" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["programs"][0]["opcodes"]["MATMUL"] > 0
    assert (out / "prefill.s").read_text().count("\n") > 10
    code, text, _ = run(capsys, "run", str(out), "--sim", "isa")
    assert code == 0 and text.startswith("ROMEO:[") and "dram_read_bytes" in text
    code, text, _ = run(capsys, "verify", "--model", "tiny", "--hw", "edge-8x8",
                        "--max-new-tokens", "3", "--eval-windows", "2", "--json")
    report = json.loads(text)
    assert code == 0
    assert report["isa_vs_int"]["bit_exact"] is True
    assert report["isa_vs_int"]["tokens_compared"] == 3
    assert 0.9 <= report["int_vs_float"]["top1_agreement"] <= 1


def test_run_refuses_a_corrupted_program(capsys, tmp_path):
    out = tmp_path / "tiny"
    assert run(capsys, "compile", "--max-new-tokens", "2", "-o", str(out))[0] == 0
    data = bytearray((out / "prefill.bin").read_bytes())
    data[100] ^= 0xFF
    (out / "prefill.bin").write_bytes(bytes(data))
    code, _, err = run(capsys, "run", str(out))
    assert code == 2 and "corrupted (CRC-32 mismatch)" in err


def test_prompt_longer_than_context(capsys, tmp_path):
    code, _, err = run(capsys, "compile", "--prompt", "x" * 250, "--max-new-tokens", "10",
                       "-o", str(tmp_path / "b"))
    assert code == 2 and "longer than the model's context of 256 tokens" in err
