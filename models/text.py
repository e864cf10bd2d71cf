"""Caption text: a tokenizer and a vocabulary that travels with the checkpoint (config.json).

Tokenizing lower-cases, splits words from punctuation, and keeps only words (letters, digits,
apostrophes inside words); punctuation is dropped. Special tokens have fixed ids:
``<pad>`` 0, ``<start>`` 1, ``<end>`` 2, ``<unk>`` 3.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """ "A red Circle, left of the blue square!" -> ["a", "red", "circle", "left", "of", "the", "blue", "square"]."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """Words <-> integer ids. ``words[i]`` is the word of id i; the first four are SPECIALS."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if tuple(self.words[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {self.words[:4]}")
        if len(set(self.words)) != len(self.words):
            raise ValueError("vocabulary words must be unique")
        object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def build(cls, captions: Iterable[str], *, min_count: int = 1) -> Vocabulary:
        """Every word seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter(word for caption in captions for word in tokenize(caption))
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w)
        )
        return cls((*SPECIALS, *kept))

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        return self._ids.get(word, self._ids[UNK])  # type: ignore[attr-defined]

    # the ids of SPECIALS, which every vocabulary starts with
    pad_id: ClassVar[int] = 0
    start_id: ClassVar[int] = 1
    end_id: ClassVar[int] = 2
    unk_id: ClassVar[int] = 3

    def encode(self, text: str, *, max_length: int | None = None) -> list[int]:
        """``<start> w1 ... wn <end>`` as ids; unknown words -> <unk>; at most ``max_length`` words."""
        words = tokenize(text)[:max_length] if max_length is not None else tokenize(text)
        return [self.start_id, *(self.id(w) for w in words), self.end_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at <end> and skipping <pad>/<start>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return " ".join(words)

    def to_json(self) -> dict[str, Any]:
        return {"words": list(self.words)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(tuple(data["words"]))
