"""Learning is real: the quickstart captioner reaches BLEU-4 >= 0.70 on held-out images, and beam
search (k=3) scores at least as well as greedy decoding on the same split. Slow."""

from __future__ import annotations

import time

import pytest
import torch

from models import checkpoints
from models.caption_data import load_captions
from models.text import Vocabulary
from models.train.captioning import CaptionDataset, decode_dataset, quickstart_config, score_captions, train_captioning
from models.train.detection import QUICKSTART_SPLITS


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quickstart_captioner_reaches_bleu4_on_held_out_images(
    quickstart_data, quickstart_out, quickstart_unet, capsys
):
    data = quickstart_data
    started = time.perf_counter()
    cfg = quickstart_config(data, quickstart_out, progress=False)
    result = train_captioning(cfg)
    minutes = (time.perf_counter() - started) / 60
    model, config = checkpoints.load_model(result["model_dir"])
    vocab = Vocabulary.from_json(config.extra["vocab"])
    references = load_captions(data / "captions" / "test.json")
    test = CaptionDataset(
        data / "images" / "test", references, vocab, size=config.input_size, max_length=cfg.max_length
    )
    scores = {}
    for k in (1, 3):
        decoded = decode_dataset(model, test, vocab, device=torch.device("cpu"), beam_size=k, max_length=cfg.max_length)
        scores[k] = score_captions(decoded, references)
    with capsys.disabled():
        for k, metrics in scores.items():
            print(f"\nquickstart captioner, beam {k}: " + ", ".join(f"{n} {v:.3f}" for n, v in metrics.items()))
        print(f"trained in {minutes:.1f} min; e.g. {decoded[test.names[0]]!r} for {references[test.names[0]]}")
    assert len(test) == QUICKSTART_SPLITS["test"]
    assert scores[3]["BLEU-4"] >= 0.70
    assert scores[3]["BLEU-4"] >= scores[1]["BLEU-4"]
