"""GenerationService: converts protos <-> models.generation, nothing else."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from torch import nn

from models import checkpoints
from models.errors import InvalidInputError
from models.generation import LatentPrior, interpolate, to_uint8
from models.preprocessing import encode_image
from services.host import LoadedModel, ModelHost
from services.imaging import Decoder
from services.pb import common_pb2, generation_pb2, generation_pb2_grpc
from services.streaming import deadline_of, timings_proto

MAX_IMAGES = 64  # per Generate call, and steps per Interpolate call
_MODES = {generation_pb2.INTERPOLATION_UNSPECIFIED: "spherical", generation_pb2.INTERPOLATION_LINEAR: "linear",
          generation_pb2.INTERPOLATION_SPHERICAL: "spherical"}


@dataclass(frozen=True)
class GenerateItem:
    latents: torch.Tensor  # (N, nz) float32, CPU


class GenerationRuntime:
    """How the ModelHost runs GenerateItems: one forward pass per item, so that a request's
    output never depends on what else shared its batch (same request -> same bytes)."""

    task = "generation"

    def warmup_item(self, config: checkpoints.ModelConfig, device: torch.device) -> GenerateItem:
        return GenerateItem(LatentPrior.of(config.model_args).sample(0, 1))

    def run_batch(self, model: nn.Module, config: checkpoints.ModelConfig,
                  items: Sequence[GenerateItem]) -> list[np.ndarray]:
        device = next(model.parameters()).device
        return [to_uint8(model(item.latents.to(device))) for item in items]


def _prior(loaded: LoadedModel) -> LatentPrior:
    return LatentPrior.of(loaded.config.model_args)


def _vector(latent: generation_pb2.Latent, nz: int, what: str) -> torch.Tensor:
    values = torch.tensor(list(latent.values), dtype=torch.float32)
    if values.numel() != nz:
        raise InvalidInputError(f"{what} has {values.numel()} values; this model's latent size is {nz}")
    if not torch.isfinite(values).all():
        raise InvalidInputError(f"{what} holds NaN or infinite values")
    return values


def generate_latents(request: generation_pb2.GenerateRequest, prior: LatentPrior) -> torch.Tensor:
    """The request's explicit latents (each checked against the model's latent size), or ``count``
    drawn from the model's prior with ``seed``."""
    nz = prior.nz
    if request.latents:
        if request.count:
            raise InvalidInputError("give either count (with seed) or latents, not both")
        if len(request.latents) > MAX_IMAGES:
            raise InvalidInputError(f"at most {MAX_IMAGES} latents per call, got {len(request.latents)}")
        return torch.stack([_vector(v, nz, f"latents[{i}]") for i, v in enumerate(request.latents)])
    count = request.count or 1
    if count > MAX_IMAGES:
        raise InvalidInputError(f"count must be in 1..{MAX_IMAGES}, got {count}; make several calls for more")
    return prior.sample(request.seed, count)


def interpolate_latents(request: generation_pb2.InterpolateRequest, prior: LatentPrior) -> torch.Tensor:
    ends = []
    for side in ("start", "end"):
        which = request.WhichOneof(side)
        if which is None:
            raise InvalidInputError(f"give the path's {side} as {side}_seed or {side}_latent")
        ends.append(prior.sample(getattr(request, which), 1)[0] if which.endswith("seed")
                    else _vector(getattr(request, which), prior.nz, which))
    if not 2 <= request.steps <= MAX_IMAGES:
        raise InvalidInputError(f"steps must be in 2..{MAX_IMAGES} (both ends included), got {request.steps}")
    if request.interpolation not in _MODES:
        raise InvalidInputError(f"unknown interpolation {request.interpolation}; use LINEAR or SPHERICAL")
    return interpolate(ends[0], ends[1], request.steps, mode=_MODES[request.interpolation])


def images_proto(pixels: np.ndarray, z: torch.Tensor, fmt: int) -> list[generation_pb2.GeneratedImage]:
    """uint8 (N, H, W, C) -> GeneratedImage protos (PNG or raw), each with its latent."""
    out = []
    for image, vector in zip(pixels, z):
        item = generation_pb2.GeneratedImage(latent=generation_pb2.Latent(values=vector.tolist()))
        if fmt == generation_pb2.IMAGE_FORMAT_RAW:
            height, width, channels = image.shape
            item.raw.CopyFrom(common_pb2.RawImage(data=np.ascontiguousarray(image).tobytes(), height=height,
                                                  width=width, channels=channels))
        else:
            item.png = encode_image(image, "png")
        out.append(item)
    return out


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """``cvtasks.v1.GenerationService`` over a ModelHost of generators."""

    service_name = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name

    def __init__(self, host: ModelHost, decoder: Decoder) -> None:
        self.host, self.decoder = host, decoder

    def add_to_server(self, server: grpc.aio.Server) -> None:
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(self, server)

    async def Generate(self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        loaded = self.host.get(request.model.name)
        prior = _prior(loaded)
        return await self._run(request, loaded, prior, generate_latents(request, prior), context)

    async def Interpolate(self, request: generation_pb2.InterpolateRequest, context: grpc.aio.ServicerContext):
        loaded = self.host.get(request.model.name)
        prior = _prior(loaded)
        return await self._run(request, loaded, prior, interpolate_latents(request, prior), context)

    async def _run(self, request, loaded: LoadedModel, prior: LatentPrior, z: torch.Tensor,
                   context) -> generation_pb2.GenerateResponse:
        t0 = time.perf_counter()
        if request.format not in (generation_pb2.IMAGE_FORMAT_UNSPECIFIED, generation_pb2.IMAGE_FORMAT_PNG,
                                  generation_pb2.IMAGE_FORMAT_RAW):
            raise InvalidInputError(f"unknown format {request.format}; use PNG or RAW")
        side = int(loaded.config.model_args.get("image_size", 64))
        with loaded.admission.admit(len(z) * side * side):
            result = await loaded.submit(GenerateItem(z), deadline=deadline_of(context, self.host.serving))
            t2 = time.perf_counter()
            images = await self.decoder.run(images_proto, result.value, z, request.format)
        response = generation_pb2.GenerateResponse(
            request_id=request.request_id, images=images,
            image_size=int(loaded.config.model_args.get("image_size", 64)),
            latent_size=prior.nz, latent_components=prior.components, latent_spread=prior.spread,
            model=common_pb2.ModelRef(name=loaded.config.name, version=loaded.config.version))
        response.timings.CopyFrom(timings_proto(t0, t0, result, t2))
        return response
