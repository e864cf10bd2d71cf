"""Show and Tell training: teacher forcing, gradient clipping, validation BLEU-4, early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from models import checkpoints
from models.caption_data import load_captions
from models.caption_metrics import caption_scores
from models.captioning import ENCODERS, POOLINGS, Captioner, beam_search, image_input, words_loss
from models.options import option
from models.preprocessing import caption_train_transform, read_image
from models.text import Vocabulary, tokenize
from models.train import loop
from models.train.config import FitConfig, split_paths, store_settings


class CaptionDataset(Dataset):
    """(image (3, S, S), caption ids (T,)), images decoded once.

    One item per image: each visit draws one of its reference captions at random (torch's
    generator, so seeded runs repeat), so an epoch encodes every image once however many
    captions it has. With ``transform`` (preprocessing.caption_train_transform) every visit
    augments the decoded image afresh; ``images`` always holds the plain inputs.
    """

    def __init__(
        self,
        images_dir: str | Path,
        captions: dict[str, list[str]],
        vocab: Vocabulary,
        *,
        size: int,
        max_length: int,
        transform: Any = None,
    ) -> None:
        self.names = sorted(captions)
        self.size, self.transform = size, transform
        pixels = {n: read_image(Path(images_dir) / n) for n in self.names}
        self.images = {n: image_input(p, size=size) for n, p in pixels.items()}
        self.pixels = pixels if transform is not None else {}
        self.captions = [[vocab.encode(c, max_length=max_length) for c in captions[n]] for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        options = self.captions[index]
        ids = options[int(torch.randint(len(options), ()))] if len(options) > 1 else options[0]
        name = self.names[index]
        if self.transform is None:
            return self.images[name], torch.tensor(ids, dtype=torch.long)
        image = image_input(self.transform(image=self.pixels[name])["image"], size=self.size)
        return image, torch.tensor(ids, dtype=torch.long)


def collate_captions(batch) -> tuple[torch.Tensor, torch.Tensor]:
    images, captions = zip(*batch)
    return torch.stack(images), torch.nn.utils.rnn.pad_sequence(list(captions), batch_first=True, padding_value=0)


@dataclass(frozen=True)
class CaptioningTrainConfig(
    FitConfig,
    defaults={"name": "captioner", "lr": 2e-3, "warmup_steps": 30, "patience": 4, "amp": False},
):
    """Arguments of ``cvtasks train captioning`` (with FitConfig's: epochs, lr, device, ...); a
    batch is ``batch_size`` captions."""

    train_images: str
    train_captions: str
    val_images: str
    val_captions: str
    backbone: str = option("resnet18", f"encoder: {', '.join(ENCODERS)}")
    embed_size: int = option(256, "image embedding and word embedding size")
    hidden_size: int = option(512, "LSTM size")
    num_layers: int = option(1, "LSTM layers")
    dropout: float = option(0.3, "dropout")
    pooling: str = option("avg", "avg: Show and Tell's global average; grid: keep where things are", choices=POOLINGS)
    grid: int = option(3, "grid pooling: cells per side")
    stages: int = option(4, "ResNet residual stages kept, 1..4")
    trainable_encoder: bool = option(True, "train only the projection and the decoder", flag="freeze_encoder")
    encoder_weights_path: str | None = option(
        None,
        "initialise the ResNet from a local torchvision state dict file, or from the encoder of a stored "
        "model (a model-store folder, e.g. a U-Net with a resnet18 encoder)",
        flag="encoder_weights",
    )
    min_count: int = option(1, "rarer words become <unk>")
    max_length: int = option(20, "words per caption (longer are cut)")
    image_size: int = option(128, "input side (pixels)")
    augment: bool = option(
        False, "shrink + shift + colour jitter (no flips, no hue: captions say left/right and colours)"
    )
    clip_grad: float = option(5.0, "gradient-norm clipping")
    words_weight: float = option(
        0.0, "weight of the auxiliary bag-of-words loss on the image embedding (0 = plain Show and Tell)"
    )


# Measured on the synthetic shapes (README figures); the slow learning test holds it to BLEU-4 >= 0.70.
# The encoder starts from the quickstart U-Net's resnet18 encoder (stem + 2 stages, trained on the
# same training images' masks): a ResNet trained from random weights on 600 images learns colours
# quickly but not shapes within a CPU budget, as Show and Tell itself relies on a pretrained CNN.
QUICKSTART_RECIPE: dict[str, Any] = {
    "backbone": "resnet18",
    "stages": 2,
    "pooling": "grid",
    "grid": 4,
    "embed_size": 128,
    "hidden_size": 256,
    "dropout": 0.1,
    "image_size": 128,
    "augment": True,
    "words_weight": 2.0,
    "epochs": 24,
    "batch_size": 16,
    "lr": 3e-3,
    "patience": 24,
}
QUICKSTART_ENCODER_FROM = "quickstart-unet"  # a model in the same store (models.train.segmentation's quickstart)


def model_args(cfg: CaptioningTrainConfig) -> dict[str, Any]:
    return {
        "backbone": cfg.backbone,
        "embed_size": cfg.embed_size,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "dropout": cfg.dropout,
        "pooling": cfg.pooling,
        "grid": cfg.grid,
        "stages": cfg.stages,
    }


def decode_dataset(
    model: Captioner,
    dataset: CaptionDataset,
    vocab: Vocabulary,
    *,
    device: torch.device,
    beam_size: int = 1,
    max_length: int = 20,
    batch_size: int = 64,
) -> dict[str, str]:
    """The best caption of every image of ``dataset`` (file name -> text)."""
    was_training = model.training
    model.eval()
    captions = {}
    for start in range(0, len(dataset.names), batch_size):
        names = dataset.names[start : start + batch_size]
        images = torch.stack([dataset.images[n] for n in names]).to(device)
        for name, best in zip(names, beam_search(model, images, beam_size=beam_size, max_length=max_length)):
            captions[name] = vocab.decode(best[0].tokens)
    model.train(was_training)
    return captions


def evaluate_captioner(
    model: Captioner,
    dataset: CaptionDataset,
    references: dict[str, list[str]],
    vocab: Vocabulary,
    *,
    device: torch.device,
    beam_size: int = 1,
    max_length: int = 20,
) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of one decoded caption per image against all its references."""
    candidates = decode_dataset(model, dataset, vocab, device=device, beam_size=beam_size, max_length=max_length)
    return score_captions(candidates, references)


def score_captions(candidates: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    return caption_scores(
        {n: c.split() for n, c in candidates.items()}, {n: [tokenize(r) for r in references[n]] for n in candidates}
    )


class TeacherForcedLoss(nn.Module):
    """The captioner's training loss as one forward pass (so that DDP sees it): cross-entropy of each
    next word given the reference's previous ones, plus ``words_weight`` x the bag-of-words loss."""

    def __init__(self, model: Captioner, *, pad_id: int, words_weight: float) -> None:
        super().__init__()
        self.model, self.pad_id, self.words_weight = model, pad_id, words_weight

    def forward(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S), captions (B, T) ids starting with <start> -> the scalar loss."""
        features = self.model.encoder(images)
        logits = self.model.decoder(features, captions)  # (B, T, V): position t predicts captions[:, t]
        loss = F.cross_entropy(
            logits[:, 1:].reshape(-1, logits.shape[-1]), captions[:, 1:].reshape(-1), ignore_index=self.pad_id
        )
        if self.words_weight > 0:
            loss = loss + self.words_weight * words_loss(self.model.words(features), captions)
        return loss


class CaptioningTask(loop.TrainTask):
    """The loop's hooks for Show and Tell: teacher forcing, clipped steps, greedy validation BLEU-4."""

    task, best_metric = "captioning", "BLEU-4"
    title = "{name} (Show and Tell, {backbone})"

    def __init__(self, cfg: CaptioningTrainConfig) -> None:
        super().__init__(cfg)
        # without the bag-of-words loss its head gets no gradient, which DDP must be told
        self.ddp_options = {"model": {"find_unused_parameters": cfg.words_weight <= 0}}

    def build(self, device: torch.device, rank: int) -> loop.TrainData:
        cfg = self.cfg
        train_refs, self.val_refs = load_captions(cfg.train_captions), load_captions(cfg.val_captions)
        self.vocab = Vocabulary.build((c for cs in train_refs.values() for c in cs), min_count=cfg.min_count)
        transform = caption_train_transform(size=cfg.image_size, seed=cfg.seed + rank) if cfg.augment else None
        train_set = CaptionDataset(
            cfg.train_images,
            train_refs,
            self.vocab,
            size=cfg.image_size,
            max_length=cfg.max_length,
            transform=transform,
        )
        self.val_set = CaptionDataset(
            cfg.val_images, self.val_refs, self.vocab, size=cfg.image_size, max_length=cfg.max_length
        )
        self.model = Captioner(
            vocab_size=len(self.vocab),
            trainable_encoder=cfg.trainable_encoder,
            encoder_weights_path=cfg.encoder_weights_path,
            **model_args(cfg),
        ).to(device)
        return loop.TrainData(train_set, collate_fn=collate_captions, drop_last=False)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def train_modules(self) -> dict[str, nn.Module]:
        return {"model": TeacherForcedLoss(self.model, pad_id=self.vocab.pad_id, words_weight=self.cfg.words_weight)}

    def step(self, batch: Any, run: loop.Run) -> dict[str, float]:
        with run.autocast():
            loss = run.nets["model"](batch[0].to(run.device), batch[1].to(run.device))
        run.update(loss)
        return {"loss": loss.item()}

    def evaluate(self, run: loop.Run) -> dict[str, float]:
        return evaluate_captioner(
            self.model, self.val_set, self.val_refs, self.vocab, device=run.device, max_length=self.cfg.max_length
        )

    def epoch_line(self, losses: dict[str, float], metrics: dict[str, float]) -> str:
        return f"loss {losses['loss']:.3f}  val BLEU-4 {metrics['BLEU-4']:.3f}  CIDEr-D {metrics['CIDEr-D']:.3f}"

    def stored(self, metrics: dict[str, float], version: str, epoch: int) -> tuple[nn.Module, checkpoints.ModelConfig]:
        extra = {"vocab": self.vocab.to_json(), "max_length": self.cfg.max_length}
        config = self.model_config(
            version, metrics, architecture="show_and_tell", model_args=model_args(self.cfg), extra=extra
        )
        return self.model, config


def train_captioning(cfg: CaptioningTrainConfig) -> dict[str, Any]:
    """Train; greedy-decode the validation images each epoch; keep the best BLEU-4 in the store."""
    outcome = loop.fit(CaptioningTask(cfg), loop.Settings.of(cfg))
    return {
        "model_dir": outcome.model_dir,
        "best_bleu4": outcome.best,
        "history": outcome.history,
        "plot": outcome.plot,
        "seconds": outcome.seconds,
    }


def quickstart_config(data_dir: str | Path, out_dir: str | Path, **overrides: Any) -> CaptioningTrainConfig:
    """The quickstart captioner's recipe (demo and the slow learning test use exactly this).

    ``data_dir`` holds `cvtasks data synth` output (the detection QUICKSTART_SPLITS); the model
    goes to ``out_dir/model_store/quickstart-captioner``, checkpoints and plots to
    ``out_dir/run-captioner``. The encoder is initialised from ``out_dir/model_store/quickstart-unet``
    (train that first: `models.train.segmentation.quickstart_config(data_dir, out_dir)`).
    """
    encoder = {"encoder_weights_path": str(Path(out_dir) / "model_store" / QUICKSTART_ENCODER_FROM)}
    paths = split_paths(data_dir, "captions", "captions/{split}.json")
    store = store_settings(out_dir, "quickstart-captioner", "run-captioner")
    return CaptioningTrainConfig(**(paths | store | encoder | QUICKSTART_RECIPE | overrides))
