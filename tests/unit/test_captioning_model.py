"""models/captioning.py: shapes, greedy vs a hand-written loop, beam search edge cases, options."""

from __future__ import annotations

import pytest
import torch

from models.captioning import MAX_CAPTION_LENGTH, Captioner, beam_search, greedy
from models.errors import InvalidInputError, UnknownModelError

VOCAB = 9


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Captioner(vocab_size=VOCAB, backbone="resnet18", embed_size=16, hidden_size=32, num_layers=2,
                     dropout=0.1).eval()


def test_teacher_forcing_shapes(model):
    captions = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])
    model.train()
    logits = model(torch.rand(2, 3, 64, 64), captions)
    model.eval()
    assert logits.shape == (2, 5, VOCAB)


def test_greedy_equals_a_hand_written_loop(model):
    images = torch.rand(2, 3, 64, 64)
    found = greedy(model, images, max_length=6)
    with torch.inference_mode():
        for b in range(2):
            _, state = model.decoder.step(model.encoder(images)[b:b + 1], None)
            token, words = torch.tensor([1]), []
            for _ in range(7):
                log_probs, state = model.decoder.step(model.decoder.embed(token), state)
                token = log_probs.argmax(-1)
                if int(token) == 2:
                    break
                words.append(int(token))
            assert list(found[b].tokens) == words[:6]


def test_no_beam_reaches_end_and_nothing_crashes(model):
    with torch.no_grad():
        saved = model.decoder.out.bias[2].item()
        model.decoder.out.bias[2] = -1e9  # <end> impossible
    try:
        for k in (1, 3):
            results = beam_search(model, torch.rand(2, 3, 64, 64), beam_size=k, max_length=5, num_captions=k)
            for captions in results:
                assert len(captions) == k
                assert all(len(c.tokens) == 5 and 2 not in c.tokens for c in captions)
    finally:
        with torch.no_grad():
            model.decoder.out.bias[2] = saved


def test_beam_returns_ranked_distinct_captions(model):
    (captions,) = beam_search(model, torch.rand(1, 3, 64, 64), beam_size=4, max_length=8, num_captions=3)
    scores = [c.score for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert len({c.tokens for c in captions}) == 3
    assert all(isinstance(t, int) for c in captions for t in c.tokens)


@pytest.mark.parametrize("kwargs, message", [({"beam_size": 0}, "beam_size"),
                                             ({"max_length": MAX_CAPTION_LENGTH + 1}, "max_length"),
                                             ({"beam_size": 2, "num_captions": 3}, "num_captions")])
def test_bad_decoding_options(model, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        beam_search(model, torch.rand(1, 3, 32, 32), **kwargs)


def test_frozen_encoder_and_unknown_backbone():
    frozen = Captioner(vocab_size=VOCAB, embed_size=8, hidden_size=8, trainable_encoder=False)
    assert not any(p.requires_grad for p in frozen.encoder.trunk.parameters())
    assert all(p.requires_grad for p in frozen.encoder.project.parameters())
    with pytest.raises(UnknownModelError, match="resnet50"):
        Captioner(vocab_size=VOCAB, backbone="vgg7")
