"""DCGAN (Radford, Metz, Chintala 2016): generator, discriminator, seeded latents, interpolation.

As in the paper: strided convolutions in D and transposed convolutions in G (no pooling, no
fully connected layers), batch norm everywhere except G's output layer and D's input layer,
ReLU in G with a tanh output, LeakyReLU(0.2) in D, weights drawn from N(0, 0.02). D returns
logits (train with BCE-with-logits). Images are (N, C, S, S) in [-1, 1], S in 32/64/128.

The latents are standard normal, or (``latent_components`` K > 0) a fixed mixture of K unit
Gaussians, as in the static GM-GAN of Ben-Yosef and Weinshall (2018): data made of distinct
kinds (a circle or a square, never something between) is easier for G to draw from separate
clusters of latents than from one blob, where the latents between two kinds give hybrids.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from models.errors import InvalidInputError
from models.files import atomic_write
from models.options import MAX_IMAGES, GenerateOptions
from models.preprocessing import decode_image, encode_image
from models.task import Job, Row, Task, device_of

if TYPE_CHECKING:
    from models.checkpoints import ModelConfig

IMAGE_SIZES = (32, 64, 128)
CHANNELS = (1, 3)
INTERPOLATIONS = ("linear", "spherical")
MAX_LATENT_COMPONENTS = 1024  # the mixture's means are drawn at load: (K, nz) numbers
MIXTURE_SEED = 1234  # the mixture means are the same for every model with the same (K, nz, spread)


def _check(image_size: int, channels: int, nz: int, width: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if nz < 1 or width < 1:
        raise ValueError(f"nz and the feature width must be >= 1, got nz={nz}, width={width}")


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02); batch-norm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (N, nz) or (N, nz, 1, 1) -> images (N, channels, image_size, image_size) in [-1, 1].

    4x4 from the latent, then doubling (halving the features) up to image_size; ``ngf`` is the
    feature width of the last hidden layer (64 in the paper).
    """

    def __init__(
        self,
        *,
        image_size: int = 64,
        channels: int = 3,
        nz: int = 100,
        ngf: int = 64,
        latent_components: int = 0,
        latent_spread: float = 1.0,
    ) -> None:
        super().__init__()
        _check(image_size, channels, nz, ngf)
        self.image_size, self.channels, self.nz = image_size, channels, nz
        self.prior = LatentPrior(nz, latent_components, latent_spread)  # what its latents are drawn from
        mult = image_size // 8  # 64 px: 8 (ngf*8 at 4x4), as in the paper
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * mult),
            nn.ReLU(True),
        ]
        while mult > 1:
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * mult // 2),
                nn.ReLU(True),
            ]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        if z.dim() != 4 or z.shape[1:] != (self.nz, 1, 1):
            raise InvalidInputError(f"latent vectors must be (N, {self.nz}), got {tuple(z.shape)}")
        return self.net(z)


class Discriminator(nn.Module):
    """images (N, channels, image_size, image_size) in [-1, 1] -> real/fake logits (N,)."""

    def __init__(self, *, image_size: int = 64, channels: int = 3, ndf: int = 64) -> None:
        super().__init__()
        _check(image_size, channels, 1, ndf)
        self.image_size, self.channels = image_size, channels
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        side, width = image_size // 2, ndf
        while side > 4:
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            side, width = side // 2, width * 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten()


def build_from_config(config: ModelConfig) -> nn.Module:
    """A stored generator (the discriminator lives only in the training run's resume state)."""
    if config.architecture != "dcgan":
        raise InvalidInputError(
            f"model `{config.name}`: unknown generation architecture `{config.architecture}` "
            f"(this version builds `dcgan`)"
        )
    return Generator(**config.model_args)


def latents(seed: int, count: int, nz: int) -> torch.Tensor:
    """``count`` standard-normal latent vectors (count, nz) from ``seed``, drawn on the CPU so the
    same seed gives the same vectors on every device, one vector after another so that the first
    k of them do not depend on ``count``."""
    return LatentPrior(nz).sample(seed, count)


@functools.cache
def _mixture_means(components: int, nz: int, spread: float) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(MIXTURE_SEED)
    return torch.randn(components, nz, generator=generator) * spread


@dataclass(frozen=True)
class LatentPrior:
    """The distribution a generator's latents come from: N(0, I) (``components`` 0, as in the
    paper) or an equal mixture of ``components`` unit Gaussians whose means were drawn once from
    N(0, spread^2 I) (fixed by MIXTURE_SEED, so they need not be stored with the weights)."""

    nz: int = 100
    components: int = 0
    spread: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.components <= MAX_LATENT_COMPONENTS:
            raise ValueError(
                f"latent_components must be 0 (one standard normal) or a count of mixture components "
                f"up to {MAX_LATENT_COMPONENTS}, got {self.components}"
            )
        if not self.spread > 0:
            raise ValueError(f"latent_spread must be > 0, got {self.spread}")

    @classmethod
    def of(cls, model_args: Mapping[str, Any]) -> LatentPrior:
        """The prior of a stored generator's ``model_args`` (older ones name only nz)."""
        return cls(
            int(model_args.get("nz", 100)),
            int(model_args.get("latent_components", 0)),
            float(model_args.get("latent_spread", 1.0)),
        )

    @property
    def means(self) -> torch.Tensor | None:
        return _mixture_means(self.components, self.nz, self.spread) if self.components else None

    def sample(self, seed: int, count: int) -> torch.Tensor:
        """``count`` latents (count, nz) from ``seed``, drawn on the CPU one after another (a
        vector, then its component), so the same seed gives the same vectors on every device and
        the first k do not depend on ``count``."""
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        means, vectors = self.means, []
        for _ in range(count):
            z = torch.randn(self.nz, generator=generator)
            if means is not None:
                z = z + means[int(torch.randint(self.components, (1,), generator=generator))]
            vectors.append(z)
        return torch.stack(vectors) if vectors else torch.zeros(0, self.nz)

    def draw(self, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``count`` latents from the global random state (training)."""
        z = torch.randn(count, self.nz, device=device)
        if self.means is None:
            return z
        return z + self.means.to(device)[torch.randint(self.components, (count,), device=device)]


def interpolate(start: torch.Tensor, end: torch.Tensor, steps: int, *, mode: str = "spherical") -> torch.Tensor:
    """``steps`` latents from ``start`` to ``end`` (both included): ``linear`` or ``spherical``
    (slerp, which keeps Gaussian latents at a typical norm; falls back to linear when the two are
    (anti)parallel)."""
    if mode not in INTERPOLATIONS:
        raise InvalidInputError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
    if steps < 2:
        raise InvalidInputError(f"steps must be >= 2 (both ends are included), got {steps}")
    if start.shape != end.shape or start.dim() != 1:
        raise InvalidInputError(
            f"start and end must be vectors of one size, got {tuple(start.shape)}, {tuple(end.shape)}"
        )
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)[:, None]
    a, b = start.double(), end.double()
    if mode == "spherical":
        cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        if float(torch.sin(omega).abs()) > 1e-6:
            return _with_ends(
                (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega), start, end
            )
    return _with_ends((1 - t) * a + t * b, start, end)


def _with_ends(path: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The path in ``start``'s dtype with its ends exactly ``start`` and ``end`` (not rounded copies)."""
    path = path.to(start.dtype)
    path[0], path[-1] = start, end
    return path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded to the nearest level."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, *, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*H + pads, cols*W + pads, C) grid, row-major."""
    count, height, width, channels = images.shape
    cols = columns or max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / cols)
    grid = np.zeros((rows * (height + pad) + pad, cols * (width + pad) + pad, channels), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        grid[y : y + height, x : x + width] = image
    return grid


# --------------------------------------------------------------------------- requests' latents


def _vector(values: Sequence[float], nz: int, what: str) -> torch.Tensor:
    vector = torch.tensor(list(values), dtype=torch.float32)
    if vector.numel() != nz:
        raise InvalidInputError(f"{what} has {vector.numel()} values; this model's latent size is {nz}")
    if not torch.isfinite(vector).all():
        raise InvalidInputError(f"{what} holds NaN or infinite values")
    return vector


def given_latents(prior: LatentPrior, rows: Sequence[Sequence[float]]) -> torch.Tensor:
    """Explicit latent vectors (count, nz), each checked against the model's latent size."""
    if not 1 <= len(rows) <= MAX_IMAGES:
        raise InvalidInputError(f"give 1..{MAX_IMAGES} latents per call, got {len(rows)}")
    return torch.stack([_vector(v, prior.nz, f"latents[{i}]") for i, v in enumerate(rows)])


def path_latents(
    prior: LatentPrior, ends: Sequence[tuple[str, int | Sequence[float]]], steps: int, mode: str
) -> torch.Tensor:
    """``steps`` latents from the first end to the second, both included; each end is (its name,
    a seed or a latent vector): a seed stands for its first latent."""
    if not 2 <= steps <= MAX_IMAGES:
        raise InvalidInputError(f"steps must be in 2..{MAX_IMAGES} (both ends included), got {steps}")
    start, end = (
        prior.sample(value, 1)[0] if isinstance(value, int) else _vector(value, prior.nz, name) for name, value in ends
    )
    return interpolate(start, end, steps, mode=mode)


# --------------------------------------------------------------------------- the task

GRID_IMAGES = 64  # shown in a batch job's grid.png


class GenerationTask(Task[GenerateOptions]):
    """DCGAN: latents (N, nz) -> uint8 images (N, H, W, C), one forward pass per input, so a
    request's images never depend on what else shared its batch. Batch jobs draw images 0..N-1
    of a seed (image i from the seed's i-th latent: a re-run, a larger count or the remote mode
    draws the same images), write ``images/<seed>/<index>.png``, rows ``{"index", "seed",
    "image"}``, ``generated.jsonl`` and ``grid.png`` (the first 64 images)."""

    name, Options, results, takes_images = "generation", GenerateOptions, "generated", False

    def build_model(self, config: ModelConfig) -> nn.Module:
        return build_from_config(config)

    def inputs_of(self, config: ModelConfig, options: GenerateOptions) -> list[torch.Tensor]:
        return [LatentPrior.of(config.model_args).sample(options.seed, options.count)]

    def input_pixels(self, config: ModelConfig, model_input: torch.Tensor) -> int:
        side = int(config.model_args.get("image_size", 64))
        return len(model_input) * side * side

    def warmup_input(self, config: ModelConfig) -> torch.Tensor:
        return LatentPrior.of(config.model_args).sample(0, 1)

    def run_batch(
        self, model: nn.Module, config: ModelConfig, inputs: Sequence[torch.Tensor], options: Sequence[GenerateOptions]
    ) -> list[np.ndarray]:
        device = device_of(model)
        return [to_uint8(model(z.to(device))) for z in inputs]

    def to_row(self, output: np.ndarray, config: ModelConfig, options: GenerateOptions) -> dict[str, Any]:
        """Generated images are files: a batch job's ``record`` writes them and names them in the row."""
        return {}

    # --- batch jobs: one input per index of the seed

    def key(self, options: GenerateOptions, index: int) -> str:
        return f"{options.seed}/{index:06d}"

    def job_inputs(self, config: ModelConfig, options: GenerateOptions, count: int) -> list[torch.Tensor]:
        """Image i's input: the seed's i-th latent, (1, nz) (the same on every device)."""
        return list(LatentPrior.of(config.model_args).sample(options.seed, count)[:, None])

    def record(self, job: Job, key: str, output: np.ndarray, size: tuple[int, int], pixels: np.ndarray | None) -> Row:
        seed, index = key.split("/")
        image = output[0] if output.ndim == 4 else output
        return {
            "seed": int(seed),
            "index": int(index),
            "image": job.out.write("images", key, ".png", encode_image(image, "png")),
        }

    def finish(self, job: Job, rows: list[Row]) -> list[Path]:
        root = job.out.root
        paths = super().finish(job, rows)
        shown = [decode_image((root / r["image"]).read_bytes()) for r in rows[:GRID_IMAGES]]
        if shown:
            gray = job.config.model_args.get("channels", 3) == 1
            pixels = np.stack([s[..., :1] if gray else s for s in shown])
            paths.append(atomic_write(root / "grid.png", encode_image(image_grid(pixels), "png")))
        return paths


GENERATION = GenerationTask()
