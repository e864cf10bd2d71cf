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
    return Captioner(
        vocab_size=VOCAB, backbone="resnet18", embed_size=16, hidden_size=32, num_layers=2, dropout=0.1
    ).eval()


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
            _, state = model.decoder.step(model.encoder(images)[b : b + 1], None)
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"max_length": MAX_CAPTION_LENGTH + 1}, "max_length"),
        ({"beam_size": 2, "num_captions": 3}, "num_captions"),
    ],
)
def test_bad_decoding_options(model, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        beam_search(model, torch.rand(1, 3, 32, 32), **kwargs)


def test_frozen_encoder_and_unknown_backbone():
    frozen = Captioner(vocab_size=VOCAB, embed_size=8, hidden_size=8, trainable_encoder=False)
    assert not any(p.requires_grad for p in frozen.encoder.trunk.parameters())
    assert all(p.requires_grad for p in frozen.encoder.project.parameters())
    with pytest.raises(UnknownModelError, match="resnet50"):
        Captioner(vocab_size=VOCAB, backbone="vgg7")


def test_words_loss_targets_the_words_of_each_caption_not_the_specials():
    from models.captioning import words_loss

    captions = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])
    perfect = torch.full((2, 8), -30.0)
    perfect[0, [4, 5]] = 30.0
    perfect[1, 6] = 30.0
    perfect[:, :4] = 30.0  # specials are ignored whatever the head says
    assert words_loss(perfect, captions).item() < 1e-6
    wrong = -perfect
    wrong[:, :4] = 30.0
    assert words_loss(wrong, captions).item() > 10


def test_encoder_weights_from_a_state_dict_file_or_a_stored_unet_encoder(tmp_path):
    from torchvision import models as tvm

    from models import checkpoints
    from models.captioning import ImageEncoder
    from models.segmentation import build_segmenter

    torch.manual_seed(1)
    resnet = tvm.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    encoder = ImageEncoder(backbone="resnet18", embed_size=16, weights_path=tmp_path / "r18.pth")
    assert torch.equal(encoder.trunk[4][0].conv1.weight, resnet.layer1[0].conv1.weight)

    args = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
    unet = build_segmenter("unet", num_classes=2, **args)
    config = checkpoints.ModelConfig(
        name="u", task="segmentation", architecture="unet", classes=("a", "b"), model_args=args, input_size=64
    )
    checkpoints.save_model(unet, config, tmp_path / "u")
    two = ImageEncoder(backbone="resnet18", embed_size=16, stages=2, weights_path=tmp_path / "u")
    assert torch.equal(two.trunk[0].weight, unet.encoder.conv1.weight)
    assert torch.equal(two.trunk[5][0].conv1.weight, unet.encoder.layer2[0].conv1.weight)
    with pytest.raises(ValueError, match="do not fit"):  # resnet18 weights into a resnet50
        ImageEncoder(backbone="resnet50", embed_size=16, weights_path=tmp_path / "r18.pth")
    with pytest.raises(FileNotFoundError, match="no such file or model folder"):
        ImageEncoder(backbone="resnet18", weights_path=tmp_path / "missing.pth")


@pytest.mark.parametrize("stages, pooling", [(1, "avg"), (2, "grid"), (3, "grid"), (4, "avg")])
def test_encoder_stages_and_pooling_give_the_embedding_size(stages, pooling):
    from models.captioning import ImageEncoder

    encoder = ImageEncoder(backbone="resnet18", embed_size=24, stages=stages, pooling=pooling, grid=2).eval()
    assert encoder(torch.rand(2, 3, 64, 64)).shape == (2, 24)


def test_a_stored_config_of_another_architecture_is_refused():
    from models import checkpoints

    config = checkpoints.ModelConfig(
        name="c",
        task="captioning",
        architecture="transformer",
        classes=(),
        model_args={"backbone": "resnet18"},
        extra={"vocab": {"words": ["a"]}},
    )
    with pytest.raises(InvalidInputError, match="unknown captioning architecture `transformer`"):
        checkpoints.build_model(config)
