"""Show and Tell training: teacher forcing, gradient clipping, validation BLEU-4, early stopping."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from models import checkpoints
from models.caption_data import load_captions
from models.caption_metrics import caption_scores
from models.captioning import Captioner, beam_search, image_input, words_loss
from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, caption_train_transform, read_image
from models.text import Vocabulary, tokenize
from models.train import common


class CaptionDataset(Dataset):
    """(image (3, S, S), caption ids (T,)), images decoded once.

    One item per image: each visit draws one of its reference captions at random (torch's
    generator, so seeded runs repeat), so an epoch encodes every image once however many
    captions it has. With ``transform`` (preprocessing.caption_train_transform) every visit
    augments the decoded image afresh; ``images`` always holds the plain inputs.
    """

    def __init__(self, images_dir: str | Path, captions: dict[str, list[str]], vocab: Vocabulary, *,
                 size: int, max_length: int, transform: Any = None) -> None:
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
class CaptioningTrainConfig:
    train_images: str
    train_captions: str
    val_images: str
    val_captions: str
    run_dir: str = "runs/captioner"
    model_store: str = "model_store"
    name: str = "captioner"
    backbone: str = "resnet18"
    embed_size: int = 256
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.3
    pooling: str = "avg"
    grid: int = 3
    stages: int = 4  # residual stages of the ResNet kept (4 = all)
    trainable_encoder: bool = True
    encoder_weights_path: str | None = None  # a local torchvision ResNet state dict
    min_count: int = 1
    max_length: int = 20
    image_size: int = 128
    augment: bool = False  # preprocessing.caption_train_transform: shrink + shift + colour jitter (no hue)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    clip_grad: float = 5.0
    words_weight: float = 0.0  # weight of the bag-of-words loss on the image embedding (0 = plain Show and Tell)
    patience: int = 4
    device: str | None = None
    seed: int = 0
    resume: bool = False
    progress: bool = True


# Measured on the synthetic shapes (README figures); the slow learning test holds it to BLEU-4 >= 0.70.
# The encoder starts from the quickstart U-Net's resnet18 encoder (stem + 2 stages, trained on the
# same training images' masks): a ResNet trained from random weights on 600 images learns colours
# quickly but not shapes within a CPU budget, as Show and Tell itself relies on a pretrained CNN.
QUICKSTART_RECIPE: dict[str, Any] = {
    "backbone": "resnet18", "stages": 2, "pooling": "grid", "grid": 4, "embed_size": 128, "hidden_size": 256,
    "dropout": 0.1, "image_size": 128, "augment": True, "words_weight": 2.0, "epochs": 24, "batch_size": 16,
    "lr": 3e-3, "patience": 24,
}
QUICKSTART_ENCODER_FROM = "quickstart-unet"  # a model in the same store (models.train.segmentation's quickstart)


def model_args(cfg: CaptioningTrainConfig) -> dict[str, Any]:
    return {"backbone": cfg.backbone, "embed_size": cfg.embed_size, "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers, "dropout": cfg.dropout, "pooling": cfg.pooling, "grid": cfg.grid,
            "stages": cfg.stages}


def decode_dataset(model: Captioner, dataset: CaptionDataset, vocab: Vocabulary, *, device: torch.device,
                   beam_size: int = 1, max_length: int = 20, batch_size: int = 64) -> dict[str, str]:
    """The best caption of every image of ``dataset`` (file name -> text)."""
    was_training = model.training
    model.eval()
    captions = {}
    for start in range(0, len(dataset.names), batch_size):
        names = dataset.names[start:start + batch_size]
        images = torch.stack([dataset.images[n] for n in names]).to(device)
        for name, best in zip(names, beam_search(model, images, beam_size=beam_size, max_length=max_length)):
            captions[name] = vocab.decode(best[0].tokens)
    model.train(was_training)
    return captions


def evaluate_captioner(model: Captioner, dataset: CaptionDataset, references: dict[str, list[str]],
                       vocab: Vocabulary, *, device: torch.device, beam_size: int = 1,
                       max_length: int = 20) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of one decoded caption per image against all its references."""
    candidates = decode_dataset(model, dataset, vocab, device=device, beam_size=beam_size, max_length=max_length)
    return score_captions(candidates, references)


def score_captions(candidates: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    return caption_scores({n: c.split() for n, c in candidates.items()},
                          {n: [tokenize(r) for r in references[n]] for n in candidates})


def train_captioning(cfg: CaptioningTrainConfig) -> dict[str, Any]:
    """Train; greedy-decode the validation images each epoch; keep the best BLEU-4 in the store."""
    started = time.perf_counter()
    common.seed_everything(cfg.seed)
    device = common.pick_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_refs, val_refs = load_captions(cfg.train_captions), load_captions(cfg.val_captions)
    vocab = Vocabulary.build((c for cs in train_refs.values() for c in cs), min_count=cfg.min_count)
    transform = caption_train_transform(size=cfg.image_size, seed=cfg.seed) if cfg.augment else None
    train_set = CaptionDataset(cfg.train_images, train_refs, vocab, size=cfg.image_size, max_length=cfg.max_length,
                               transform=transform)
    val_set = CaptionDataset(cfg.val_images, val_refs, vocab, size=cfg.image_size, max_length=cfg.max_length)
    model = Captioner(vocab_size=len(vocab), trainable_encoder=cfg.trainable_encoder,
                      encoder_weights_path=cfg.encoder_weights_path, **model_args(cfg)).to(device)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate_captions)
    optimizer = common.build_optimizer(model.parameters(), name="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = common.warmup_cosine(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.epochs * len(loader))
    history: dict[str, list[float]] = defaultdict(list)
    start_epoch, best, stale = 1, -1.0, 0
    version = checkpoints.next_version(cfg.model_store, cfg.name)
    if cfg.resume and (state := common.load_resume_state(run_dir)) is not None:
        start_epoch, best, version = common.restore_resume_state(
            state, model=model, optimizer=optimizer, scheduler=scheduler, history=history)
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        total = 0.0
        for images, captions in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if cfg.progress else True):
            images, captions = images.to(device), captions.to(device)
            features = model.encoder(images)
            logits = model.decoder(features, captions)  # (B, T, V): position t predicts captions[:, t]
            loss = F.cross_entropy(logits[:, 1:].reshape(-1, logits.shape[-1]), captions[:, 1:].reshape(-1),
                                   ignore_index=vocab.pad_id)
            if cfg.words_weight > 0:
                loss = loss + cfg.words_weight * words_loss(model.words(features), captions)
            common.optimizer_step(loss, optimizer, scheduler, None, clip_grad=cfg.clip_grad)
            total += loss.item()
        metrics = evaluate_captioner(model, val_set, val_refs, vocab, device=device, max_length=cfg.max_length)
        history["loss"].append(total / max(1, len(loader)))
        for k, v in metrics.items():
            history[k].append(v)
        if cfg.progress:
            print(f"epoch {epoch}/{cfg.epochs}: loss {history['loss'][-1]:.3f}  val BLEU-4 {metrics['BLEU-4']:.3f}  "
                  f"CIDEr-D {metrics['CIDEr-D']:.3f}", flush=True)
        if metrics["BLEU-4"] > best:
            best, stale = metrics["BLEU-4"], 0
            config = checkpoints.ModelConfig(
                name=cfg.name, task="captioning", architecture="show_and_tell", classes=(),
                model_args=model_args(cfg), input_size=cfg.image_size,
                normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, metrics=metrics,
                version=version, extra={"vocab": vocab.to_json(), "max_length": cfg.max_length,
                                        "train_config": asdict(cfg)})
            checkpoints.save_model(model, config, Path(cfg.model_store) / cfg.name)
        else:
            stale += 1
        common.save_resume_state(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                                 history=history, best=best, version=version)
        common.plot_history(history, run_dir / "curves.png", title=f"{cfg.name} (Show and Tell, {cfg.backbone})")
        if stale >= cfg.patience:
            break
    return {"model_dir": Path(cfg.model_store) / cfg.name, "best_bleu4": best, "history": dict(history),
            "plot": run_dir / "curves.png", "seconds": time.perf_counter() - started}


def quickstart_config(data_dir: str | Path, out_dir: str | Path, **overrides: Any) -> CaptioningTrainConfig:
    """The quickstart captioner's recipe (demo and the slow learning test use exactly this).

    ``data_dir`` holds `cvtasks data synth` output (the detection QUICKSTART_SPLITS); the model
    goes to ``out_dir/model_store/quickstart-captioner``, checkpoints and plots to
    ``out_dir/run-captioner``. The encoder is initialised from ``out_dir/model_store/quickstart-unet``
    (train that first: `models.train.segmentation.quickstart_config(data_dir, out_dir)`).
    """
    data, out = Path(data_dir), Path(out_dir)
    settings: dict[str, Any] = {
        "train_images": str(data / "images" / "train"),
        "train_captions": str(data / "captions" / "train.json"),
        "val_images": str(data / "images" / "val"),
        "val_captions": str(data / "captions" / "val.json"),
        "run_dir": str(out / "run-captioner"),
        "model_store": str(out / "model_store"),
        "name": "quickstart-captioner",
        "encoder_weights_path": str(out / "model_store" / QUICKSTART_ENCODER_FROM),
        **QUICKSTART_RECIPE,
    }
    settings.update(overrides)
    return CaptioningTrainConfig(**settings)
