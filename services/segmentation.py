"""SegmentationService: converts protos <-> models.segmentation, nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from torch import nn

from models import checkpoints
from models.errors import InvalidInputError
from models.preprocessing import encode_image, to_tensor
from models.segmentation import (
    LargeImageMode,
    Segmentation,
    SegmentOptions,
    class_areas,
    class_contours,
    segment_batch,
)
from models.visualize import overlay_labels
from services.host import ModelHost
from services.imaging import Decoder
from services.pb import common_pb2, segmentation_pb2, segmentation_pb2_grpc
from services.streaming import deadline_of, ordered_stream, timings_proto

_MODES = {
    segmentation_pb2.LARGE_IMAGE_MODE_UNSPECIFIED: LargeImageMode.RESIZE,
    segmentation_pb2.LARGE_IMAGE_MODE_RESIZE: LargeImageMode.RESIZE,
    segmentation_pb2.LARGE_IMAGE_MODE_TILE: LargeImageMode.TILE,
}
_PROCESSING = {"whole": segmentation_pb2.PROCESSING_WHOLE, "resized": segmentation_pb2.PROCESSING_RESIZED,
               "tiled": segmentation_pb2.PROCESSING_TILED}


@dataclass(frozen=True)
class SegmentItem:
    image: torch.Tensor  # (3, H, W) float in [0, 1], CPU
    options: SegmentOptions


class SegmentationRuntime:
    """How the ModelHost runs a batch of SegmentItems (same-size images in one forward pass)."""

    task = "segmentation"

    def warmup_item(self, config: checkpoints.ModelConfig, device: torch.device) -> SegmentItem:
        side = config.input_size or 256
        return SegmentItem(torch.zeros(3, side, side), SegmentOptions())

    def run_batch(self, model: nn.Module, config: checkpoints.ModelConfig,
                  items: Sequence[SegmentItem]) -> list[Segmentation]:
        device = next(model.parameters()).device
        mean, std = config.normalization["mean"], config.normalization["std"]
        return segment_batch(model, [item.image.to(device) for item in items], mean=mean, std=std,
                             options=[item.options for item in items])


def _options(request: segmentation_pb2.SegmentRequest) -> tuple[SegmentOptions, float]:
    o = request.options
    if o.large_image_mode not in _MODES:
        raise InvalidInputError(f"unknown large_image_mode {o.large_image_mode}; use RESIZE or TILE")
    alpha = o.overlay_alpha if o.HasField("overlay_alpha") else 0.5
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"overlay_alpha must be in [0, 1], got {alpha}")
    options = SegmentOptions(
        max_side=o.max_side if o.HasField("max_side") else SegmentOptions.max_side,
        large_image_mode=_MODES[o.large_image_mode],
        tile_overlap=o.tile_overlap if o.HasField("tile_overlap") else None,
    )
    return options, alpha


def _response(request: segmentation_pb2.SegmentRequest, array: np.ndarray, seg: Segmentation,
              class_names: Sequence[str], alpha: float) -> segmentation_pb2.SegmentResponse:
    """Encode the label map (and overlay / contours when asked) — CPU work, run in the decode pool."""
    height, width = seg.labels.shape
    response = segmentation_pb2.SegmentResponse(
        request_id=request.request_id, label_map_png=encode_image(seg.labels, "png"),
        image_width=width, image_height=height, processing=_PROCESSING[seg.processing],
        processing_detail=seg.detail,
        areas=[segmentation_pb2.ClassArea(class_id=i, class_name=n, pixel_count=c, area_fraction=f)
               for i, n, c, f in class_areas(seg.labels, class_names)],
    )
    if request.options.include_contours:
        for class_id, name, polygons in class_contours(seg.labels, class_names):
            response.contours.add(class_id=class_id, class_name=name, polygons=[
                segmentation_pb2.Polygon(points=[segmentation_pb2.Point(x=int(x), y=int(y)) for x, y in poly])
                for poly in polygons])
    if request.options.include_overlay:
        response.overlay_png = encode_image(overlay_labels(array, seg.labels, alpha=alpha), "png")
    return response


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    """``cvtasks.v1.SegmentationService`` over a ModelHost of segmentation models."""

    service_name = segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name

    def __init__(self, host: ModelHost, decoder: Decoder, *, stream_window: int = 16) -> None:
        self.host, self.decoder, self.stream_window = host, decoder, stream_window

    def add_to_server(self, server: grpc.aio.Server) -> None:
        segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server(self, server)

    async def Segment(self, request: segmentation_pb2.SegmentRequest, context: grpc.aio.ServicerContext):
        return await self._segment(request, deadline_of(context, self.host.serving))

    async def SegmentStream(self, request_iterator: AsyncIterator[segmentation_pb2.SegmentRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[segmentation_pb2.SegmentResponse]:
        deadline = deadline_of(context)

        def failed(request, error: common_pb2.ItemError) -> segmentation_pb2.SegmentResponse:
            return segmentation_pb2.SegmentResponse(request_id=request.request_id, error=error)

        async for response in ordered_stream(request_iterator, lambda r: self._segment(r, deadline),
                                             on_error=failed, window=self.stream_window):
            yield response

    async def _segment(self, request: segmentation_pb2.SegmentRequest, deadline: float | None):
        t0 = time.perf_counter()
        loaded = self.host.get(request.model.name)
        options, alpha = _options(request)
        with loaded.admission.admit(self.decoder.pixels(request.image)):
            array, tensor = await self.decoder.decode(request.image, to_tensor)
            t1 = time.perf_counter()
            result = await loaded.submit(SegmentItem(tensor, options), deadline=deadline)
            t2 = time.perf_counter()
            response = await self.decoder.run(_response, request, array, result.value, loaded.config.classes, alpha)
        response.model.CopyFrom(common_pb2.ModelRef(name=loaded.config.name, version=loaded.config.version))
        response.timings.CopyFrom(timings_proto(t0, t1, result, t2))
        return response
