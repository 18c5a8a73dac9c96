"""Tokenizers: the character table of the project's ``tiny`` model, and Hugging Face
``tokenizer.json`` files through the ``tokenizers`` library.

Contract
--------
``load_tokenizer(path)`` reads a checkpoint's ``tokenizer.json``: a character table
(``{"type": "char", "chars": "..."}``, what ``accel train`` writes for ``tiny``) becomes a
``CharTokenizer``, any other file is handed to ``tokenizers.Tokenizer`` (BPE, WordPiece,
Unigram: the library's implementation, not ours) and becomes an ``HFTokenizer``; a file
neither can read raises ``ValueError`` naming it. Both have ``encode(text) -> list[int]``,
``decode(ids) -> str`` and ``vocab_size``.

A ``CharTokenizer`` maps each character of a fixed alphabet to its index; a character
outside it raises ``ValueError`` naming the character. An ``HFTokenizer`` encodes as
transformers' ``tokenizer(text)`` does (the file's post-processor adds its special tokens,
e.g. Llama's BOS) and decodes with the special tokens shown.

Decoding never fails: an id the tokenizer does not know (a model's vocabulary is often
padded beyond its tokenizer's, and an untrained model may pick any id) becomes U+FFFD, the
Unicode replacement character, one per id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tokenizers

REPLACEMENT = "\ufffd"      # what an id outside the alphabet decodes to
BOS, EOS = "<s>", "</s>"    # the special tokens of ``HFTokenizer.train``'s BPE


@dataclass(frozen=True)
class CharTokenizer:
    chars: str

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("type") != "char" or \
                not isinstance(data.get("chars"), str):
            raise ValueError(f"{path}: not a character tokenizer table")
        return cls(data["chars"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}) + "\n")

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        index = {c: i for i, c in enumerate(self.chars)}
        try:
            return [index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer's "
                             "alphabet") from None

    def decode(self, ids) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else REPLACEMENT for i in map(int, ids))


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` read by the ``tokenizers`` library."""

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self._tok = tokenizer

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added (special) tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; ``ValueError`` when the tokenizer cannot encode it (a
        word-level vocabulary without an unknown token, ...)."""
        try:
            return self._tok.encode(text).ids
        except Exception as e:   # the library raises a bare Exception
            raise ValueError(f"the tokenizer cannot encode the text ({e})") from None

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    @classmethod
    def train(cls, texts, vocab_size: int) -> HFTokenizer:
        """A byte-level BPE (GPT-2's pre-tokenizer and decoder, Llama's ``<s>`` BOS added
        to every encoding, ``</s>`` reserved) trained on ``texts`` (an iterable of str)
        by the library's ``BpeTrainer`` to ``vocab_size`` tokens; any text encodes, since
        the 256 byte symbols are in the vocabulary."""
        from tokenizers import decoders, models, pre_tokenizers, processors, trainers

        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
        return cls(tok)

    def decode(self, ids) -> str:
        out, run = [], []
        for i in map(int, ids):
            if i >= 0 and self._tok.id_to_token(i) is not None:
                run.append(i)
                continue
            out.append(self._tok.decode(run, skip_special_tokens=False) if run else "")
            out.append(REPLACEMENT)
            run = []
        out.append(self._tok.decode(run, skip_special_tokens=False) if run else "")
        return "".join(out)


def load_tokenizer(path: str | Path) -> CharTokenizer | HFTokenizer:
    """The tokenizer in ``path`` (a ``tokenizer.json``); ``ValueError`` naming the file when
    it is neither a character table nor a file the ``tokenizers`` library reads."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and data.get("type") == "char":
        return CharTokenizer.load(path)
    try:
        return HFTokenizer(tokenizers.Tokenizer.from_str(text))
    except Exception as e:   # the library raises a bare Exception for a malformed file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: neither a character table nor a tokenizer the "
                         f"`tokenizers` library reads ({first})") from None
