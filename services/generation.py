"""``cvtasks.v1.GenerationService``: proto mapping only (the task is models/generation.py)."""

from __future__ import annotations

import numpy as np
import torch

from models.errors import InvalidInputError
from models.generation import LatentPrior, given_latents, image_grid, path_latents
from models.options import GenerateOptions, InterpolateOptions
from models.preprocessing import encode_image
from services.pb import common_pb2, generation_pb2, generation_pb2_grpc
from services.pipeline import Answer, Call
from services.typed import TypedService

_PATHS = {
    generation_pb2.INTERPOLATION_UNSPECIFIED: "spherical",
    generation_pb2.INTERPOLATION_LINEAR: "linear",
    generation_pb2.INTERPOLATION_SPHERICAL: "spherical",
}
_FORMATS = (generation_pb2.IMAGE_FORMAT_UNSPECIFIED, generation_pb2.IMAGE_FORMAT_PNG, generation_pb2.IMAGE_FORMAT_RAW)


def _check_format(request: generation_pb2.GenerateRequest | generation_pb2.InterpolateRequest) -> None:
    if request.format not in _FORMATS:
        raise InvalidInputError(f"unknown format {request.format}; use PNG or RAW")


def images_proto(pixels: np.ndarray, z: torch.Tensor, fmt: int) -> list[generation_pb2.GeneratedImage]:
    """uint8 (N, H, W, C) -> GeneratedImage protos (PNG or raw), each with its latent."""
    out = []
    for image, vector in zip(pixels, z):
        item = generation_pb2.GeneratedImage(latent=generation_pb2.Latent(values=vector.tolist()))
        if fmt == generation_pb2.IMAGE_FORMAT_RAW:
            height, width, channels = image.shape
            item.raw.CopyFrom(
                common_pb2.RawImage(
                    data=np.ascontiguousarray(image).tobytes(), height=height, width=width, channels=channels
                )
            )
        else:
            item.png = encode_image(image, "png")
        out.append(item)
    return out


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer, TypedService):
    task = "generation"
    unary_rpcs = {"Generate": "generate_call", "Interpolate": "interpolate_call"}
    http_routes = {"generate": "Generate", "interpolate": "Interpolate"}
    route_options = {"Generate": GenerateOptions, "Interpolate": InterpolateOptions}

    def picture(
        self, request: generation_pb2.GenerateRequest | generation_pb2.InterpolateRequest, answer: Answer
    ) -> np.ndarray:
        """The images in a grid; an interpolation path in one row."""
        images = answer.outputs[0]
        return image_grid(
            images, columns=len(images) if isinstance(request, generation_pb2.InterpolateRequest) else None
        )

    def generate_call(self, request: generation_pb2.GenerateRequest) -> Call:
        """``count`` latents of ``seed`` from the model's prior, or the request's own latents."""
        _check_format(request)
        if not request.latents:
            return Call(options={"seed": request.seed, "count": request.count or None})
        if request.count:
            raise InvalidInputError("give either count (with seed) or latents, not both")
        rows = [list(v.values) for v in request.latents]
        return Call(inputs=lambda config: [given_latents(LatentPrior.of(config.model_args), rows)])

    def interpolate_call(self, request: generation_pb2.InterpolateRequest) -> Call:
        """``steps`` latents between two seeds' first latents or two given latents."""
        _check_format(request)
        ends = []
        for side in ("start", "end"):
            which = request.WhichOneof(side)
            if which is None:
                raise InvalidInputError(f"give the path's {side} as {side}_seed or {side}_latent")
            value = getattr(request, which)
            ends.append((which, value if which.endswith("seed") else list(value.values)))
        if request.interpolation not in _PATHS:
            raise InvalidInputError(f"unknown interpolation {request.interpolation}; use LINEAR or SPHERICAL")
        mode, steps = _PATHS[request.interpolation], request.steps
        return Call(inputs=lambda config: [path_latents(LatentPrior.of(config.model_args), ends, steps, mode)])

    def respond(
        self, request: generation_pb2.GenerateRequest | generation_pb2.InterpolateRequest, answer: Answer
    ) -> generation_pb2.GenerateResponse:
        prior, z = LatentPrior.of(answer.config.model_args), answer.inputs[0]
        return generation_pb2.GenerateResponse(
            **self.envelope(request, answer, size=False),
            images=images_proto(answer.outputs[0], z, request.format),
            image_size=int(answer.config.model_args.get("image_size", 64)),
            latent_size=prior.nz,
            latent_components=prior.components,
            latent_spread=prior.spread,
        )
