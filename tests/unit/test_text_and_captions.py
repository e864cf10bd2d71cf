"""models/text.py (tokenizer, vocabulary) and models/caption_data.py (three caption formats)."""

from __future__ import annotations

import json

import pytest

from models.caption_data import load_captions
from models.errors import DatasetError
from models.text import SPECIALS, Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A red Circle, to the LEFT of a blue square!") == [
        "a",
        "red",
        "circle",
        "to",
        "the",
        "left",
        "of",
        "a",
        "blue",
        "square",
    ]
    assert tokenize("it's 3 dogs... (maybe)") == ["it's", "3", "dogs", "maybe"]


def test_vocabulary_min_count_order_and_specials():
    vocab = Vocabulary.build(["a red circle", "a blue circle", "a red square", "one hexagon"], min_count=2)
    assert vocab.words[:4] == SPECIALS
    assert vocab.words[4:] == ("a", "circle", "red")  # by count, then alphabetical
    assert vocab.encode("A red hexagon.") == [1, vocab.id("a"), vocab.id("red"), 3, 2]
    assert vocab.decode([1, vocab.id("red"), vocab.id("circle"), 2, vocab.id("a")]) == "red circle"
    assert vocab.decode([1, 999, 0]) == "<unk>"


def test_vocabulary_round_trips_through_json():
    vocab = Vocabulary.build(["x y z", "y z", "z"])
    again = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert again == vocab and again.encode("z y") == vocab.encode("z y")


def test_encode_truncates_to_max_length():
    vocab = Vocabulary.build(["a b c d e"])
    assert len(vocab.encode("a b c d e", max_length=2)) == 4


@pytest.mark.parametrize("words", [("a", "b"), ("<pad>", "<start>", "<end>", "<unk>", "x", "x")])
def test_bad_vocabularies(words):
    with pytest.raises(ValueError):
        Vocabulary(words)


def test_coco_captions_from_the_synthetic_dataset(shapes_dir):
    captions = load_captions(shapes_dir / "captions" / "test.json")
    assert len(captions) == 16 and all(texts for texts in captions.values())
    assert all(text.startswith("a ") for texts in captions.values() for text in texts)


def test_jsonl_and_csv(tmp_path):
    (tmp_path / "c.jsonl").write_text(
        '{"image": "a.jpg", "caption": "one"}\n\n{"image": "a.jpg", "captions": ["two", "three"]}\n'
    )
    assert load_captions(tmp_path / "c.jsonl") == {"a.jpg": ["one", "two", "three"]}
    (tmp_path / "c.csv").write_text('image,caption\na.jpg,"a cat, sitting"\nb.jpg,a dog\n')
    assert load_captions(tmp_path / "c.csv") == {"a.jpg": ["a cat, sitting"], "b.jpg": ["a dog"]}


def test_bad_caption_files_name_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg", "caption": "ok"}\n{"image": "b.jpg"}\n')
    with pytest.raises(DatasetError, match="bad.jsonl:2"):
        load_captions(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("file,text\nx,y\n")
    with pytest.raises(DatasetError, match="header"):
        load_captions(tmp_path / "bad.csv")
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(DatasetError, match="unknown caption format"):
        load_captions(tmp_path / "c.txt")
