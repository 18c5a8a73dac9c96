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
    lines = out.splitlines()
    assert lines[0].startswith("[float]   ROMEO:") and lines[1].startswith("[integer] ROMEO:")
    assert len(lines[0]) == len("[float]   ROMEO:") + 16
