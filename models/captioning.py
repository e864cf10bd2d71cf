"""Show and Tell captioning: a ResNet encoder and an LSTM decoder, with greedy and beam search.

The image embedding is the LSTM's first input (step -1), then ``<start>``, w1, ...: the model
learns p(w_t | image, w_<t). Token ids follow models/text.py (<pad> 0, <start> 1, <end> 2).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from models.batch.store import write_csv
from models.errors import InvalidInputError
from models.layers import check_fit
from models.options import MAX_BEAM_SIZE, MAX_CAPTION_LENGTH, MAX_LENGTH_PENALTY, CaptionOptions  # noqa: F401
from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, letterbox, normalize
from models.registry import Registry
from models.task import Job, Row, Task, stacked
from models.text import Vocabulary

if TYPE_CHECKING:
    from models.checkpoints import ModelConfig

ENCODERS: Registry = Registry("captioning encoder")
ENCODERS.register("resnet18")(lambda: tvm.resnet18(weights=None))
ENCODERS.register("resnet34")(lambda: tvm.resnet34(weights=None))
ENCODERS.register("resnet50")(lambda: tvm.resnet50(weights=None))

DEFAULT_MAX_LENGTH = 20  # words: a request's max_length when the model's config names none
MAX_LSTM_LAYERS = 8  # more is no Show and Tell (and each layer is a module built even on the meta device)


def image_input(image: np.ndarray, *, size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised float (3, size, size), aspect kept and padded; no flips
    (captions say left and right). Training and serving both call this."""
    boxed, _, _ = letterbox(image, size=size)
    return torch.from_numpy(normalize(boxed, mean=IMAGENET_MEAN, std=IMAGENET_STD)).permute(2, 0, 1).contiguous()


POOLINGS = ("avg", "grid")


# A captioner's encoder keeps the ResNet's children in ``trunk`` (an nn.Sequential): its index i
# is the torchvision child of that position (conv1, bn1, relu, maxpool, layer1, ...).
_TRUNK_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A stored model's encoder as torchvision ResNet parameter names (an smp ResNet encoder has
    them already; a captioner's ``trunk.<i>.`` is renamed)."""
    state = encoder.state_dict()
    if not any(k.startswith("trunk.") for k in state):
        return state
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "trunk" and parts[1] in _TRUNK_NAMES:
            renamed[".".join([_TRUNK_NAMES[parts[1]], *parts[2:]])] = value
    return renamed


def load_trunk_weights(resnet: nn.Module, source: str | os.PathLike, *, stages: int | None = 4) -> int:
    """Initialise ``resnet`` from ``source``: a torchvision ResNet state dict file, or a
    model-store folder of a model with a ResNet ``encoder`` (a stored U-Net with a resnet
    encoder, whose smp encoder keeps torchvision's parameter names, or a stored captioner). Only
    the stem and the first ``stages`` residual stages must be present (an encoder of smaller
    depth is fine when the caller keeps as few stages; None: as many as ``source`` holds, the
    rest keep their weights); anything else in ``source`` is ignored. Returns the stages loaded."""
    path = Path(source)
    if path.is_dir():
        from models import checkpoints

        stored, _ = checkpoints.load_model(path)
        encoder = getattr(stored, "encoder", None)
        if encoder is None:
            raise ValueError(f"{path} holds no model with an `encoder` to take weights from")
        state = _encoder_state(encoder)
    elif path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"encoder weights {path}: no such file or model folder")
    if stages is None:
        stages = max((i for i in range(1, 5) if any(k.startswith(f"layer{i}.") for k in state)), default=0)
    needed = ("conv1.", "bn1.", *(f"layer{i}." for i in range(1, stages + 1)))
    own = {k: v for k, v in resnet.state_dict().items() if k.startswith(needed)}
    check_fit(own, state, f"encoder weights {path} do not fit a {type(resnet).__name__} with {stages} stages")
    resnet.load_state_dict({k: state[k] for k in own}, strict=False)
    return stages


class ImageEncoder(nn.Module):
    """(B, 3, H, W) normalised images -> (B, embed_size) image embeddings.

    The ResNet trunk (random init, or ``weights_path``: a local torchvision state dict) is
    frozen when ``trainable=False``; the projection (linear + batch norm) always trains.
    ``pooling="avg"`` is Show and Tell's global average; ``"grid"`` averages into a
    ``grid x grid`` layout before projecting, so the embedding keeps where things are (captions
    that say "to the left of" need that when the trunk is trained from scratch). ``stages``
    keeps the first 1..4 residual stages: 3 ends at stride 16 with a finer map and a quarter
    of resnet18's compute and parameters gone, which suits small images and small data.
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet18",
        embed_size: int = 256,
        trainable: bool = True,
        weights_path: str | os.PathLike | None = None,
        pooling: str = "avg",
        grid: int = 3,
        stages: int = 4,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        if not 1 <= stages <= 4:
            raise ValueError(f"stages must be in 1..4, got {stages}")
        resnet = ENCODERS.get(backbone)()
        if weights_path is not None:
            load_trunk_weights(resnet, weights_path, stages=stages)
        # stem (conv1, bn1, relu, maxpool) + the first `stages` residual stages: the feature map
        self.trunk = nn.Sequential(*list(resnet.children())[: 4 + stages])
        with torch.no_grad():
            features = self.trunk.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
        self.trunk.train()
        self.trunk.requires_grad_(trainable)
        cells = 1 if pooling == "avg" else grid * grid
        self.pool = nn.AdaptiveAvgPool2d(1 if pooling == "avg" else grid)
        self.project = nn.Sequential(nn.Linear(features * cells, embed_size), nn.BatchNorm1d(embed_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(self.trunk(images)).flatten(1))


class CaptionDecoder(nn.Module):
    """Embedding + LSTM + vocabulary projection."""

    def __init__(
        self,
        *,
        vocab_size: int,
        embed_size: int = 256,
        hidden_size: int = 512,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= num_layers <= MAX_LSTM_LAYERS:
            raise ValueError(f"num_layers must be in 1..{MAX_LSTM_LAYERS}, got {num_layers}")
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=0)
        self.lstm = nn.LSTM(
            embed_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
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


DECODER_ARGS = ("hidden_size", "num_layers", "dropout")  # a Captioner's settings that are its decoder's


class Captioner(nn.Module):
    """Encoder + decoder; ``forward(images, captions)`` gives teacher-forced logits (B, T, V).

    ``words`` is a bag-of-words head on the image embedding: it predicts which words the
    caption uses. Training may add its loss (``words_weight``) so that the encoder gets a direct
    signal instead of only one through the LSTM's first step — this matters when the encoder
    starts from random weights, as it does offline. Decoding never uses it.

    ``parts``: the decoder's settings (``DECODER_ARGS``: hidden_size, num_layers, dropout) and
    the encoder's (backbone, pooling, grid, stages), each with its part's default;
    ``trainable_encoder`` and ``encoder_weights_path`` are the encoder's ``trainable`` and
    ``weights_path``.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        embed_size: int = 256,
        trainable_encoder: bool = True,
        encoder_weights_path: str | None = None,
        **parts: Any,
    ) -> None:
        super().__init__()
        decoder = {key: parts.pop(key) for key in DECODER_ARGS if key in parts}
        start = {"trainable": trainable_encoder, "weights_path": encoder_weights_path}
        self.encoder = ImageEncoder(embed_size=embed_size, **start, **parts)
        self.decoder = CaptionDecoder(vocab_size=vocab_size, embed_size=embed_size, **decoder)
        self.words = nn.Linear(embed_size, vocab_size)

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images), captions)

    def start(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Show and Tell's image step: (B, 3, H, W) -> the LSTM state (h, c), each (layers, B,
        hidden), after the image embedding is fed from a zero state (its prediction is unused)."""
        _, state = self.decoder.step(self.encoder(images), None)
        return state

    def step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One word: the previous tokens (N,) int64 and the state -> log-probabilities (N, V), new state."""
        return self.decoder.step(self.decoder.embed(tokens), state)


class CaptionSteps(Protocol):
    """What decoding needs of a captioner: ``start`` and ``step`` as Captioner's. A stored model
    has them, and so do its exported parts (models/export_captioning.py)."""

    def start(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...


def words_loss(word_logits: torch.Tensor, captions: torch.Tensor, *, first_word_id: int = 4) -> torch.Tensor:
    """Multi-label BCE of the bag-of-words head against the words of each caption (B, T); the
    special tokens (ids below ``first_word_id``) are not targets."""
    targets = torch.zeros_like(word_logits)
    targets.scatter_(1, captions, 1.0)
    return F.binary_cross_entropy_with_logits(word_logits[:, first_word_id:], targets[:, first_word_id:])


def build_from_config(config: ModelConfig) -> nn.Module:
    """A stored captioner: the vocabulary size comes from ``extra["vocab"]``."""
    if config.architecture != "show_and_tell":
        raise InvalidInputError(
            f"model `{config.name}`: unknown captioning architecture `{config.architecture}` "
            f"(this version builds `show_and_tell`)"
        )
    vocab = config.extra.get("vocab")
    words = vocab.get("words") if isinstance(vocab, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError('a captioner\'s config needs its vocabulary as extra.vocab = {"words": [...]}')
    return Captioner(vocab_size=len(Vocabulary.from_json(vocab)), **config.model_args)


@dataclass(frozen=True)
class Caption:
    """A decoded caption: token ids (without <start>/<end>), summed log-probability, ranking score."""

    tokens: tuple[int, ...]
    log_prob: float
    score: float  # log_prob / length ** length_penalty (what beams are ranked by)


def check_options(beam_size: int, max_length: int, num_captions: int, length_penalty: float = 1.0) -> None:
    """InvalidInputError (-> INVALID_ARGUMENT) naming the bad option and its allowed range."""
    CaptionOptions(beam_size=beam_size, max_length=max_length, num_captions=num_captions, length_penalty=length_penalty)


@torch.inference_mode()
def beam_search(
    model: CaptionSteps,
    images: torch.Tensor,
    *,
    beam_size: int = 3,
    max_length: int = 20,
    num_captions: int = 1,
    length_penalty: float = 1.0,
    start_id: int = 1,
    end_id: int = 2,
) -> list[list[Caption]]:
    """Batched beam search over (B, 3, H, W) images -> per image the ``num_captions`` best captions.

    beam_size 1 is greedy decoding. Finished beams (that emitted <end>) keep their score; a beam
    still open after ``max_length`` words is closed there with <end> (its probability counted),
    so no caption is longer than max_length, whether or not the model ever chose <end>.
    """
    check_options(beam_size, max_length, num_captions, length_penalty)
    batch, k = images.shape[0], beam_size
    state = tuple(s.repeat_interleave(k, dim=1) for s in model.start(images))  # (layers, B*k, H)
    device = images.device
    tokens = torch.full((batch * k,), start_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only the first
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * k, dtype=torch.long, device=device)
    for step in range(max_length + 1):  # max_length words, then room for <end>
        log_probs, state = model.step(tokens, state)  # (B*k, V)
        vocab = log_probs.shape[-1]
        if step == max_length:  # out of room: every open beam ends here, with <end>'s probability
            log_probs = torch.where(
                torch.arange(vocab, device=device) == end_id, log_probs, torch.full_like(log_probs, float("-inf"))
            )
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


def _best(
    history: torch.Tensor,
    scores: torch.Tensor,
    lengths: torch.Tensor,
    batch: int,
    k: int,
    num_captions: int,
    length_penalty: float,
    end_id: int,
) -> list[list[Caption]]:
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


def greedy(model: CaptionSteps, images: torch.Tensor, *, max_length: int = 20) -> list[Caption]:
    """Greedy decoding (beam size 1): the single most likely word at each step."""
    return [c[0] for c in beam_search(model, images, beam_size=1, max_length=max_length)]


def caption_batch(model: CaptionSteps, images: torch.Tensor, options: list[CaptionOptions]) -> list[list[Caption]]:
    """Caption (B, 3, S, S) images, each with its own options (max_length set): images sharing
    options decode in one batched beam search; results come back in input order."""
    if len(options) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(options)} options")
    groups: dict[CaptionOptions, list[int]] = {}
    for i, s in enumerate(options):
        groups.setdefault(s, []).append(i)
    results: list[list[Caption] | None] = [None] * len(options)
    for s, indices in groups.items():
        found = beam_search(
            model,
            images[indices],
            beam_size=s.beam_size,
            max_length=s.max_length,
            num_captions=s.num_captions,
            length_penalty=s.length_penalty,
        )
        for i, captions in zip(indices, found):
            results[i] = captions
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class CaptionText:
    """A caption as words: its text, summed log-probability and ranking score."""

    text: str
    log_prob: float
    score: float


def max_length_of(config: ModelConfig) -> int:
    """The model's trained caption length: the default max_length of a request."""
    return int(config.extra.get("max_length", DEFAULT_MAX_LENGTH))


@functools.lru_cache(maxsize=32)
def _vocabulary(name: str, version: str, words: tuple[str, ...]) -> Vocabulary:
    return Vocabulary(words)


def vocabulary_of(config: ModelConfig) -> Vocabulary:
    """The model's vocabulary, built once per model version."""
    return _vocabulary(config.name, config.version, tuple(config.extra["vocab"]["words"]))


def caption_row(captions: Sequence[CaptionText]) -> dict[str, Any]:
    """``{"caption": the best, "captions": [{"text", "log_prob", "score"}]}`` (rounded)."""
    return {
        "caption": captions[0].text if captions else "",
        "captions": [{"text": c.text, "log_prob": round(c.log_prob, 4), "score": round(c.score, 4)} for c in captions],
    }


class CaptioningTask(Task[CaptionOptions]):
    """Show and Tell: an image -> its best captions (CaptionText, best first). Batch jobs write
    rows ``{"width", "height", "caption", "captions": [{"text", "log_prob", "score"}]}``,
    ``captions.jsonl`` and ``captions.csv`` (input, caption, score)."""

    name, Options, results = "captioning", CaptionOptions, "captions"

    def build_model(self, config: ModelConfig) -> nn.Module:
        return build_from_config(config)

    def options(self, config: ModelConfig, given: Any) -> CaptionOptions:
        options = CaptionOptions.of(given)
        if options.max_length is None:
            options = dataclasses.replace(options, max_length=max_length_of(config))
        return options

    def model_input(self, rgb: np.ndarray, config: ModelConfig) -> torch.Tensor:
        return image_input(rgb, size=self.side(config))

    def run_batch(
        self, model: nn.Module, config: ModelConfig, inputs: Sequence[torch.Tensor], options: Sequence[CaptionOptions]
    ) -> list[list[CaptionText]]:
        images = stacked(inputs, model)
        vocab = vocabulary_of(config)
        return [
            [CaptionText(vocab.decode(c.tokens), c.log_prob, c.score) for c in captions]
            for captions in caption_batch(model, images, list(options))
        ]

    def to_row(self, output: list[CaptionText], config: ModelConfig, options: CaptionOptions) -> dict[str, Any]:
        return caption_row(output)

    def finish(self, job: Job, rows: list[Row]) -> list[Path]:
        table = [[r["input"], r["caption"], r["captions"][0]["score"] if r["captions"] else ""] for r in rows]
        csv_path = write_csv(job.out.root / "captions.csv", ["input", "caption", "score"], table)
        return [*super().finish(job, rows), csv_path]


CAPTIONING = CaptioningTask()
