"""Character-level tokenizer for the project's own ``tiny`` model.

Contract
--------
A ``CharTokenizer`` maps each character of a fixed alphabet to its index. Its table is
stored beside the checkpoint as ``tokenizer.json`` (``{"type": "char", "chars": "..."}``).
Encoding a character outside the alphabet raises ``ValueError`` naming the character.
Decoding never fails: an id outside the alphabet (a model's vocabulary is often padded
beyond its tokenizer's, and an untrained model may pick any id) becomes U+FFFD, the
Unicode replacement character, one per id.

Tested by tests/models/test_train.py (the character table a training run writes) and
tests/accel/test_cli.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REPLACEMENT = "\ufffd"      # what an id outside the alphabet decodes to


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
