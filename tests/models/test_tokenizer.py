"""The character tokenizer (models/tokenizer.py): round trips, refusals, and ids outside
the alphabet (a padded vocabulary) decoded without failing."""

import pytest
import tokenizers

from models.tokenizer import BOS, REPLACEMENT, CharTokenizer, HFTokenizer, load_tokenizer


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


def _bpe(tmp_path):
    tok = HFTokenizer.train(["to be or not to be, that is the question"] * 20, vocab_size=300)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    return load_tokenizer(path)


def test_a_hugging_face_tokenizer_json_is_read_by_the_tokenizers_library(tmp_path):
    tok = _bpe(tmp_path)
    assert isinstance(tok, HFTokenizer) and 256 < tok.vocab_size <= 300
    ids = tok.encode("to be or not")
    assert ids[0] == tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")
                                                    ).token_to_id(BOS)
    assert len(ids) < len("to be or not")          # merges, not one token per character
    assert tok.decode(ids) == BOS + "to be or not"
    # Bytes outside the training text still encode (byte-level), and round-trip.
    assert tok.decode(tok.encode("naïve ☃")[1:]) == "naïve ☃"


def test_ids_a_bpe_does_not_know_decode_to_the_replacement_character(tmp_path):
    tok = _bpe(tmp_path)
    to, be = tok.encode("to")[1], tok.encode("be")[1]
    assert tok.decode([to, tok.vocab_size, 10**6, -1, be]) == "to" + 3 * REPLACEMENT + "be"


def test_the_character_table_is_still_a_character_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.json"
    CharTokenizer("abc").save(path)
    assert load_tokenizer(path) == CharTokenizer("abc")


@pytest.mark.parametrize(("text", "message"), [
    ('{"model": {"type": "BPE"}}', "neither a character table nor a tokenizer the"),
    ("{not json", "not valid JSON"),
])
def test_a_file_no_tokenizer_reads_is_named(tmp_path, text, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"tokenizer.json: {message}"):
        load_tokenizer(path)
