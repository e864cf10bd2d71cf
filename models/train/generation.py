"""DCGAN training on a folder of images: Adam (lr 2e-4, beta1 0.5) for both networks, optional
one-sided label smoothing, linear learning-rate decay, DiffAugment and a weight-averaged
generator, a fixed-noise sample grid PNG each epoch, checkpoint + resume, and a plot of the G
and D losses."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from models import checkpoints
from models.datasets import IMAGE_SUFFIXES
from models.errors import DatasetError
from models.generation import CHANNELS, IMAGE_SIZES, Discriminator, Generator, LatentPrior, image_grid, to_uint8
from models.options import option
from models.preprocessing import center_crop_resize, encode_image, read_image
from models.train import loop
from models.train.config import RunConfig, store_settings


def image_files(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such image folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
    return files


def gan_input(image, *, size: int, channels: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (channels, size, size) in [-1, 1]: centre-cropped, resized, gray
    when ``channels`` is 1."""
    square = center_crop_resize(image, size=size)
    if channels == 1:
        square = cv2.cvtColor(square, cv2.COLOR_RGB2GRAY)[..., None]
    return torch.from_numpy(square).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ImageFolder(Dataset):
    """Every image under a folder, decoded once (the folders a DCGAN trains on are small)."""

    def __init__(self, folder: str | Path, *, size: int, channels: int) -> None:
        self.files = image_files(folder)
        self.images = []
        for path in self.files:
            try:
                self.images.append(gan_input(read_image(path), size=size, channels=channels))
            except Exception as exc:  # noqa: BLE001 — name the file, whatever the decoder said
                raise DatasetError(f"{path}: cannot be read as an image ({exc})") from exc

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


@dataclass(frozen=True)
class GenerationTrainConfig(RunConfig, defaults={"name": "generator", "epochs": 25, "batch_size": 64, "lr": 2e-4}):
    """Arguments of ``cvtasks train generation`` (with RunConfig's: epochs, device, ...); ``lr`` is
    both networks'."""

    images: str = option(help="folder of images (any size: centre-cropped and resized)")
    image_size: int = option(64, "image side (pixels)", choices=IMAGE_SIZES)
    channels: int = option(3, "1 = grayscale", choices=CHANNELS)
    nz: int = option(100, "latent size")
    ngf: int = option(64, "generator feature width")
    ndf: int = option(64, "discriminator feature width")
    # A fixed mixture of K unit Gaussians (models.generation.LatentPrior) lets G keep distinct kinds
    # of image apart instead of drawing hybrids between them.
    latent_components: int = option(
        0,
        "draw latents from a fixed mixture of K unit Gaussians (GM-GAN) instead of "
        "N(0, I); helps when the images are of distinct kinds (0 = N(0, I))",
    )
    latent_spread: float = option(1.0, "the mixture's means are drawn from N(0, spread^2)")
    beta1: float = option(0.5, "Adam's beta1")
    label_smoothing: float = option(0.0, "one-sided: real targets are 1 - this (e.g. 0.1); fake targets stay 0")
    # Epochs E..`epochs` reach lr / (epochs - E + 1) in the last one (as pix2pix and CycleGAN do),
    # which stills the GAN's wandering at the end; an E past `epochs` (a recipe cut short) never decays.
    lr_decay_from: int = option(
        0, "from this epoch on, lower both learning rates linearly towards 0 at the last epoch (0 = constant)"
    )
    ema_decay: float = option(
        0.0,
        "store and draw samples from a moving average of G's weights with this decay "
        "per step, e.g. 0.999 (0 = the last step's weights; Yazici et al. 2019)",
    )
    augment: str = option(
        "",
        "differentiable augmentation of every image D sees (DiffAugment, Zhao et al. 2020): "
        "a comma list of translation, color (empty = none)",
    )
    sample_seed: int = option(0, "fixed noise of the per-epoch sample grid")
    sample_count: int = 64


def model_args(cfg: GenerationTrainConfig) -> dict[str, Any]:
    args = {"image_size": cfg.image_size, "channels": cfg.channels, "nz": cfg.nz, "ngf": cfg.ngf}
    if cfg.latent_components:  # a standard-normal generator's model_args stay as they always were
        args.update(latent_components=cfg.latent_components, latent_spread=cfg.latent_spread)
    return args


def _sample_grid(generator: Generator, noise: torch.Tensor, path: Path) -> Path:
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        pixels = to_uint8(generator(noise))
    generator.train(was_training)
    grid = image_grid(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(grid, "png"))
    return path


def learning_rate(cfg: GenerationTrainConfig, epoch: int) -> float:
    """Both networks' learning rate in ``epoch`` (1-based): ``lr``, then the linear decay of ``lr_decay_from``."""
    if not cfg.lr_decay_from or epoch < cfg.lr_decay_from:
        return cfg.lr
    return cfg.lr * (cfg.epochs + 1 - epoch) / (cfg.epochs + 1 - cfg.lr_decay_from)


AUGMENTATIONS = ("translation", "color")


def augmentations(policy: str) -> list[str]:
    """The names in a comma list such as "translation,color" ("" -> none); unknown names raise."""
    names = [name.strip() for name in policy.split(",") if name.strip()]
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}: choose from {', '.join(AUGMENTATIONS)}")
    return names


def diff_augment(images: torch.Tensor, policy: str) -> torch.Tensor:
    """DiffAugment: random per-image shifts of up to 1/8 of the side (the gap filled with 0, mid
    grey in [-1, 1]) and/or random brightness, saturation and contrast, all differentiable, so
    that D's gradient reaches G through them."""
    n, _, h, w = images.shape
    device = images.device
    for name in augmentations(policy):
        if name == "color":
            images = images + (torch.rand(n, 1, 1, 1, device=device) - 0.5)  # brightness
            mean = images.mean(dim=1, keepdim=True)
            images = (images - mean) * (torch.rand(n, 1, 1, 1, device=device) * 2) + mean  # saturation
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * (torch.rand(n, 1, 1, 1, device=device) + 0.5) + mean  # contrast
        else:  # translation
            pad_h, pad_w = max(1, h // 8), max(1, w // 8)
            dy = torch.randint(-pad_h, pad_h + 1, (n, 1), device=device)
            dx = torch.randint(-pad_w, pad_w + 1, (n, 1), device=device)
            rows = torch.arange(h, device=device)[None] + dy + pad_h  # (n, h) rows of the padded image
            cols = torch.arange(w, device=device)[None] + dx + pad_w
            padded = F.pad(images, (pad_w, pad_w, pad_h, pad_h))
            batch = torch.arange(n, device=device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return images


@torch.no_grad()
def ema_update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``average``'s parameters move ``1 - decay`` of the way to ``model``'s; buffers (batch-norm
    statistics) are copied."""
    for avg, live in zip(average.parameters(), model.parameters(), strict=True):
        avg.lerp_(live, 1.0 - decay)
    for avg, live in zip(average.buffers(), model.buffers(), strict=True):
        avg.copy_(live)


def check_config(cfg: GenerationTrainConfig) -> LatentPrior:
    """Bad options fail before any image is read; returns the latent prior of ``cfg``."""
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.lr_decay_from < 0:
        raise ValueError(f"lr_decay_from must be 0 (no decay) or an epoch >= 1, got {cfg.lr_decay_from}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0: no average), got {cfg.ema_decay}")
    augmentations(cfg.augment)
    return LatentPrior.of(model_args(cfg))


class GenerationTask(loop.TrainTask):
    """The loop's hooks for a DCGAN: two networks and two Adam optimisers, one step that updates D
    then G, a fixed-noise sample grid after every epoch, and the generator stored after every epoch."""

    task, plot_file = "generation", "losses.png"
    title = "{name} (DCGAN {image_size} px)"

    def __init__(self, cfg: GenerationTrainConfig) -> None:
        super().__init__(cfg)
        self.prior = check_config(cfg)
        self.grid: Path | None = None

    def build(self, device: torch.device, rank: int) -> loop.TrainData:
        cfg = self.cfg
        dataset = ImageFolder(cfg.images, size=cfg.image_size, channels=cfg.channels)
        self.generator = Generator(**model_args(cfg)).to(device)
        self.discriminator = Discriminator(image_size=cfg.image_size, channels=cfg.channels, ndf=cfg.ndf).to(device)
        self.average = copy.deepcopy(self.generator).eval().requires_grad_(False) if cfg.ema_decay else None
        self.noise = self.prior.sample(cfg.sample_seed, cfg.sample_count).to(device)
        return loop.TrainData(dataset)

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self, settings: loop.Settings, steps_per_epoch: int) -> dict[str, Any]:
        betas = (self.cfg.beta1, 0.999)
        return {
            "opt_g": torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr, betas=betas),
            "opt_d": torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr, betas=betas),
        }

    def extra_parts(self) -> dict[str, Any]:
        return {"generator_ema": self.average} if self.average is not None else {}

    def begin_epoch(self, run: loop.Run) -> None:
        for optimizer in run.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(self.cfg, run.epoch)

    def step(self, batch: torch.Tensor, run: loop.Run) -> dict[str, float]:
        """One D update on real and generated images, then one G update; the EMA follows G."""
        generator, discriminator = run.nets["generator"], run.nets["discriminator"]
        opt_g, opt_d, policy = run.optimizers["opt_g"], run.optimizers["opt_d"], self.cfg.augment
        real = batch.to(run.device)
        fake = generator(self.prior.draw(real.shape[0], run.device))
        d_real = discriminator(diff_augment(real, policy))
        d_fake = discriminator(diff_augment(fake.detach(), policy))
        loss_d = F.binary_cross_entropy_with_logits(
            d_real, torch.full_like(d_real, 1.0 - self.cfg.label_smoothing)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        d_on_fake = discriminator(diff_augment(fake, policy))
        loss_g = F.binary_cross_entropy_with_logits(d_on_fake, torch.ones_like(d_on_fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if self.average is not None:  # a short memory at first, so the average forgets the random start
            step = (run.epoch - 1) * run.steps_per_epoch + run.step - 1
            ema_update(self.average, self.generator, min(self.cfg.ema_decay, (1 + step) / (10 + step)))
        return {
            "d_loss": loss_d.item(),
            "g_loss": loss_g.item(),
            "D(x)": torch.sigmoid(d_real).mean().item(),
            "D(G(z))": torch.sigmoid(d_fake).mean().item(),
        }

    def served(self) -> Generator:
        return self.average if self.average is not None else self.generator

    def evaluate(self, run: loop.Run) -> dict[str, float]:
        """No metric: the epoch's sample grid of the fixed noise."""
        path = Path(self.cfg.run_dir) / "samples" / f"epoch_{run.epoch:03d}.png"
        self.grid = _sample_grid(self.served(), self.noise, path)
        return {}

    def epoch_line(self, losses: dict[str, float], metrics: dict[str, float]) -> str:
        return (
            f"D loss {losses['d_loss']:.3f}  G loss {losses['g_loss']:.3f}  D(x) {losses['D(x)']:.2f}  "
            f"D(G(z)) {losses['D(G(z))']:.2f}  samples {self.grid}"
        )

    def stored(self, metrics: dict[str, float], version: str, epoch: int) -> tuple[nn.Module, checkpoints.ModelConfig]:
        halves = [0.5] * self.cfg.channels  # images in [-1, 1]
        return self.served(), self.model_config(
            version,
            metrics,
            architecture="dcgan",
            model_args=model_args(self.cfg),
            normalization={"mean": halves, "std": halves},
            extra={"epochs_trained": epoch},
        )


def train_generation(cfg: GenerationTrainConfig) -> dict[str, Any]:
    """Train G and D; after every epoch write a sample grid and keep the generator in the store."""
    task = GenerationTask(cfg)
    outcome = loop.fit(task, loop.Settings.of(cfg))
    return {
        "model_dir": outcome.model_dir,
        "history": outcome.history,
        "samples": task.grid,
        "plot": outcome.plot,
        "seconds": outcome.seconds,
    }


# The quickstart generator learns single shapes on solid backgrounds at 32 px, i.e.
# `cvtasks data synth --size 32 --max-shapes 1 --solid-backgrounds --train 3000 --val 0 --test 300 --seed 0`
# (the test split is what `cvtasks eval generation` compares samples with).
QUICKSTART_DATA: dict[str, Any] = {
    "splits": {"train": 3000, "test": 300},
    "image_size": 32,
    "max_shapes": 1,
    "solid_backgrounds": True,
}
QUICKSTART_RECIPE: dict[str, Any] = {
    "image_size": 32,
    "channels": 3,
    "nz": 64,
    "ngf": 32,
    "ndf": 32,
    "epochs": 48,
    "batch_size": 16,
    "label_smoothing": 0.1,
    "lr_decay_from": 25,
    "augment": "translation,color",
    "latent_components": 32,
}


def quickstart_data(data_dir: str | Path, *, seed: int = 0, progress: bool = False) -> Path:
    """Write the quickstart generator's dataset (QUICKSTART_DATA) to ``data_dir``."""
    from models.synth import generate_shapes

    generate_shapes(data_dir, **QUICKSTART_DATA, seed=seed, progress=progress)
    return Path(data_dir)


def quickstart_config(data_dir: str | Path, out_dir: str | Path, **overrides: Any) -> GenerationTrainConfig:
    """The quickstart DCGAN's recipe (demo and the slow learning test use exactly this).

    ``data_dir`` holds `quickstart_data` output; the generator goes to
    ``out_dir/model_store/quickstart-generator``, sample grids, checkpoint and plot to ``out_dir/run-generator``.
    """
    images = {"images": str(Path(data_dir) / "images" / "train")}
    store = store_settings(out_dir, "quickstart-generator", "run-generator")
    return GenerationTrainConfig(**(images | store | QUICKSTART_RECIPE | overrides))
