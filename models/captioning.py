"""Show and Tell captioning: a ResNet encoder and an LSTM decoder, with greedy and beam search.

The image embedding is the LSTM's first input (step -1), then ``<start>``, w1, ...: the model
learns p(w_t | image, w_<t). Token ids follow models/text.py (<pad> 0, <start> 1, <end> 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from models.checkpoints import MODEL_BUILDERS, ModelConfig
from models.errors import InvalidInputError
from models.registry import Registry

ENCODERS: Registry = Registry("captioning encoder")
ENCODERS.register("resnet18")(lambda: tvm.resnet18(weights=None))
ENCODERS.register("resnet34")(lambda: tvm.resnet34(weights=None))
ENCODERS.register("resnet50")(lambda: tvm.resnet50(weights=None))

MAX_CAPTION_LENGTH = 64  # words; requests beyond this are refused


class ImageEncoder(nn.Module):
    """(B, 3, H, W) normalised images -> (B, embed_size) image embeddings.

    The ResNet trunk (random init, or ``weights_path``: a local torchvision state dict) is
    frozen when ``trainable=False``; the projection (linear + batch norm) always trains.
    """

    def __init__(self, *, backbone: str = "resnet18", embed_size: int = 256, trainable: bool = True,
                 weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        resnet = ENCODERS.get(backbone)()
        if weights_path is not None:
            resnet.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        features = resnet.fc.in_features
        self.trunk = nn.Sequential(*list(resnet.children())[:-1])  # up to global average pooling
        self.trunk.requires_grad_(trainable)
        self.project = nn.Sequential(nn.Linear(features, embed_size), nn.BatchNorm1d(embed_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.trunk(images).flatten(1))


class CaptionDecoder(nn.Module):
    """Embedding + LSTM + vocabulary projection."""

    def __init__(self, *, vocab_size: int, embed_size: int = 256, hidden_size: int = 512, num_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=0)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. features (B, E), captions (B, T) = <start> w1 .. <end> <pad>..
        -> logits (B, T, V) where position t predicts captions[:, t] (position 0 sees the image)."""
        inputs = torch.cat([features.unsqueeze(1), self.embed(captions[:, :-1])], dim=1)  # (B, T, E)
        hidden, _ = self.lstm(inputs)
        return self.out(self.drop(hidden))

    def step(self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        """One time step: inputs (N, E) -> log-probabilities (N, V), new state."""
        hidden, state = self.lstm(inputs.unsqueeze(1), state)
        return F.log_softmax(self.out(hidden[:, 0]), dim=-1), state


class Captioner(nn.Module):
    """Encoder + decoder; ``forward(images, captions)`` gives teacher-forced logits (B, T, V)."""

    def __init__(self, *, vocab_size: int, backbone: str = "resnet18", embed_size: int = 256,
                 hidden_size: int = 512, num_layers: int = 1, dropout: float = 0.0, trainable_encoder: bool = True,
                 encoder_weights_path: str | None = None) -> None:
        super().__init__()
        self.encoder = ImageEncoder(backbone=backbone, embed_size=embed_size, trainable=trainable_encoder,
                                    weights_path=encoder_weights_path)
        self.decoder = CaptionDecoder(vocab_size=vocab_size, embed_size=embed_size, hidden_size=hidden_size,
                                      num_layers=num_layers, dropout=dropout)

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images), captions)


@MODEL_BUILDERS.register("captioning")
def build_from_config(config: ModelConfig) -> nn.Module:
    """A stored captioner: the vocabulary size comes from ``extra["vocab"]``."""
    return Captioner(vocab_size=len(config.extra["vocab"]["words"]), **config.model_args)


@dataclass(frozen=True)
class Caption:
    """A decoded caption: token ids (without <start>/<end>), summed log-probability, ranking score."""

    tokens: tuple[int, ...]
    log_prob: float
    score: float  # log_prob / length ** length_penalty (what beams are ranked by)


def _check(beam_size: int, max_length: int, num_captions: int) -> None:
    if beam_size < 1:
        raise InvalidInputError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= max_length <= MAX_CAPTION_LENGTH:
        raise InvalidInputError(f"max_length must be in 1..{MAX_CAPTION_LENGTH}, got {max_length}")
    if not 1 <= num_captions <= beam_size:
        raise InvalidInputError(f"num_captions must be in 1..beam_size ({beam_size}), got {num_captions}")


@torch.inference_mode()
def beam_search(model: Captioner, images: torch.Tensor, *, beam_size: int = 3, max_length: int = 20,
                num_captions: int = 1, length_penalty: float = 1.0, start_id: int = 1,
                end_id: int = 2) -> list[list[Caption]]:
    """Batched beam search over (B, 3, H, W) images -> per image the ``num_captions`` best captions.

    beam_size 1 is greedy decoding. Finished beams (that emitted <end>) keep their score; a beam
    still open after ``max_length`` words is closed there with <end> (its probability counted),
    so no caption is longer than max_length, whether or not the model ever chose <end>.
    """
    _check(beam_size, max_length, num_captions)
    dec = model.decoder
    batch, k = images.shape[0], beam_size
    _, state = dec.step(model.encoder(images), None)  # the image step; its prediction is unused
    state = tuple(s.repeat_interleave(k, dim=1) for s in state)  # (layers, B*k, H)
    device = images.device
    tokens = torch.full((batch * k,), start_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only the first
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * k, dtype=torch.long, device=device)
    for step in range(max_length + 1):  # max_length words, then room for <end>
        log_probs, state = dec.step(dec.embed(tokens), state)  # (B*k, V)
        vocab = log_probs.shape[-1]
        if step == max_length:  # out of room: every open beam ends here, with <end>'s probability
            log_probs = torch.where(torch.arange(vocab, device=device) == end_id, log_probs,
                                    torch.full_like(log_probs, float("-inf")))
        # A finished beam may only continue with <pad> at no cost.
        log_probs = torch.where(finished[:, None], torch.full_like(log_probs, float("-inf")), log_probs)
        log_probs[finished, 0] = 0.0
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        scores, flat = candidates.topk(k, dim=1)  # (B, k)
        beam = torch.div(flat, vocab, rounding_mode="floor")  # integer index arithmetic
        word = flat % vocab
        source = (beam + torch.arange(batch, device=device)[:, None] * k).view(-1)  # (B*k,)
        state = tuple(s[:, source] for s in state)
        history = torch.cat([history[source], word.view(-1, 1)], dim=1)
        was_finished = finished[source]
        tokens = word.view(-1)
        lengths = lengths[source] + (~was_finished).long()
        finished = was_finished | (tokens == end_id)
        if bool(finished.all()):
            break
    return _best(history, scores, lengths, batch, k, num_captions, length_penalty, end_id)


def _best(history: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor, batch: int, k: int,
          num_captions: int, length_penalty: float, end_id: int) -> list[list[Caption]]:
    ranked = scores.view(-1) / lengths.clamp_min(1).float() ** length_penalty
    results = []
    for b in range(batch):
        idx = range(b * k, (b + 1) * k)
        order = sorted(idx, key=lambda i: -float(ranked[i]))[:num_captions]
        captions = []
        for i in order:
            words = [int(t) for t in history[i].tolist()]
            words = words[: words.index(end_id)] if end_id in words else [t for t in words if t != 0]
            captions.append(Caption(tuple(words), float(scores.view(-1)[i]), float(ranked[i])))
        results.append(captions)
    return results


def greedy(model: Captioner, images: torch.Tensor, *, max_length: int = 20) -> list[Caption]:
    """Greedy decoding (beam size 1): the single most likely word at each step."""
    return [c[0] for c in beam_search(model, images, beam_size=1, max_length=max_length)]
