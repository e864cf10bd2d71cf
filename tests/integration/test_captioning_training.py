"""Captioning training end to end on a small synthetic split: store, rebuild, decode, resume."""

from __future__ import annotations

import json

import torch

from models import checkpoints
from models.captioning import greedy
from models.text import Vocabulary
from models.train.captioning import CaptioningTrainConfig, collate_captions, train_captioning


def _config(shapes_dir, tmp_path, **kw) -> CaptioningTrainConfig:
    return CaptioningTrainConfig(
        train_images=str(shapes_dir / "images" / "val"),
        train_captions=str(shapes_dir / "captions" / "val.json"),
        val_images=str(shapes_dir / "images" / "test"),
        val_captions=str(shapes_dir / "captions" / "test.json"),
        run_dir=str(tmp_path / "run"),
        model_store=str(tmp_path / "store"),
        name="cap",
        embed_size=32,
        hidden_size=64,
        batch_size=16,
        warmup_steps=2,
        progress=False,
        **kw,
    )


def test_train_store_rebuild_decode_and_resume(shapes_dir, tmp_path):
    first = train_captioning(_config(shapes_dir, tmp_path, epochs=1))
    assert len(first["history"]["BLEU-4"]) == 1 and "CIDEr-D" in first["history"]
    model, config = checkpoints.load_model(tmp_path / "store" / "cap")
    vocab = Vocabulary.from_json(config.extra["vocab"])
    assert config.task == "captioning" and "circle" in vocab.words and config.extra["max_length"] == 20
    (caption,) = greedy(model, torch.zeros(1, 3, 128, 128), max_length=config.extra["max_length"])
    assert all(isinstance(t, int) and 0 <= t < len(vocab) for t in caption.tokens)
    assert isinstance(vocab.decode([1, *caption.tokens]), str)

    resumed = train_captioning(_config(shapes_dir, tmp_path, epochs=2, resume=True))
    assert len(resumed["history"]["BLEU-4"]) == 2
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())["loss"]) == 2


def test_collate_pads_with_zero():
    images, captions = collate_captions(
        [(torch.zeros(3, 4, 4), torch.tensor([1, 5, 2])), (torch.zeros(3, 4, 4), torch.tensor([1, 2]))]
    )
    assert images.shape == (2, 3, 4, 4) and captions.tolist() == [[1, 5, 2], [1, 2, 0]]
