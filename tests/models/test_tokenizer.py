"""The character tokenizer (models/tokenizer.py): round trips, refusals, and ids outside
the alphabet (a padded vocabulary) decoded without failing."""

import pytest

from models.tokenizer import REPLACEMENT, CharTokenizer


def test_round_trip_and_an_unknown_character_named():
    tok = CharTokenizer.from_text("to be or not")
    assert tok.decode(tok.encode("be not")) == "be not"
    with pytest.raises(ValueError, match="'x' is not in the tokenizer's alphabet"):
        tok.encode("box")


def test_ids_outside_the_alphabet_decode_to_the_replacement_character():
    """A model whose vocabulary (128) is padded beyond its 2-character alphabet may emit
    any id: each unknown one is one U+FFFD, and the known ones still decode."""
    tok = CharTokenizer("ab")
    assert tok.decode([0, 1, 2, 127, -1, 1]) == "ab" + 3 * REPLACEMENT + "b"


def test_a_table_that_is_not_a_character_tokenizer_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(ValueError, match="not a character tokenizer table"):
        CharTokenizer.load(path)
