"""DetectionService: converts protos <-> models.detection, nothing else.

Flow of one image: decode in the Decoder pool -> the model's batcher -> Detections -> proto.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import torch
from torch import nn

from models import checkpoints
from models.detection import Detection, DetectOptions, predict
from models.preprocessing import to_tensor
from services.host import LoadedModel, ModelHost
from services.imaging import Decoder
from services.pb import common_pb2, detection_pb2, detection_pb2_grpc
from services.streaming import deadline_of, ordered_stream, timings_proto


@dataclass(frozen=True)
class DetectItem:
    image: torch.Tensor  # (3, H, W) float in [0, 1], on CPU
    options: DetectOptions


class DetectionRuntime:
    """How the ModelHost runs a batch of DetectItems on a Faster R-CNN."""

    task = "detection"

    def warmup_item(self, config: checkpoints.ModelConfig, device: torch.device) -> DetectItem:
        side = config.input_size or 320
        return DetectItem(torch.zeros(3, side, side), DetectOptions())

    def run_batch(
        self, model: nn.Module, config: checkpoints.ModelConfig, items: Sequence[DetectItem]
    ) -> list[list[Detection]]:
        device = next(model.parameters()).device
        images = [item.image.to(device, non_blocking=True) for item in items]
        return predict(model, images, class_names=config.classes, options=[item.options for item in items])


def _options(request: detection_pb2.DetectRequest, loaded: LoadedModel) -> DetectOptions:
    opts = request.options
    defaults = DetectOptions()
    options = DetectOptions(
        score_threshold=opts.score_threshold if opts.HasField("score_threshold") else defaults.score_threshold,
        max_detections=opts.max_detections if opts.HasField("max_detections") else defaults.max_detections,
        class_filter=tuple(opts.class_filter),
    )
    options.check_classes(loaded.config.classes)
    return options


class DetectionServicer(detection_pb2_grpc.DetectionServiceServicer):
    """``cvtasks.v1.DetectionService`` over a ModelHost of detection models."""

    service_name = detection_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name

    def __init__(self, host: ModelHost, decoder: Decoder, *, stream_window: int = 32) -> None:
        self.host, self.decoder, self.stream_window = host, decoder, stream_window

    def add_to_server(self, server: grpc.aio.Server) -> None:
        detection_pb2_grpc.add_DetectionServiceServicer_to_server(self, server)

    async def Detect(self, request: detection_pb2.DetectRequest, context: grpc.aio.ServicerContext):
        return await self._detect(request, deadline_of(context, self.host.serving))

    async def DetectStream(
        self, request_iterator: AsyncIterator[detection_pb2.DetectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[detection_pb2.DetectResponse]:
        deadline = deadline_of(context)

        def failed(request: detection_pb2.DetectRequest, error: common_pb2.ItemError) -> detection_pb2.DetectResponse:
            return detection_pb2.DetectResponse(request_id=request.request_id, error=error)

        async for response in ordered_stream(
            request_iterator, lambda r: self._detect(r, deadline), on_error=failed, window=self.stream_window
        ):
            yield response

    async def _detect(self, request: detection_pb2.DetectRequest, deadline: float | None):
        t0 = time.perf_counter()
        loaded = self.host.get(request.model.name)
        options = _options(request, loaded)
        with loaded.admission.admit(self.decoder.pixels(request.image)):
            array, tensor = await self.decoder.decode(request.image, to_tensor)
            t1 = time.perf_counter()
            result = await loaded.submit(DetectItem(tensor, options), deadline=deadline)
        t2 = time.perf_counter()
        height, width = array.shape[:2]
        response = detection_pb2.DetectResponse(
            request_id=request.request_id,
            model=common_pb2.ModelRef(name=loaded.config.name, version=loaded.config.version),
            detections=[
                detection_pb2.Detection(
                    box=common_pb2.BoundingBox(x_min=d.box[0], y_min=d.box[1], x_max=d.box[2], y_max=d.box[3]),
                    score=d.score, label=d.label, class_name=d.class_name,
                )
                for d in result.value
            ],
            image_width=width,
            image_height=height,
        )
        response.timings.CopyFrom(timings_proto(t0, t1, result, t2))
        return response
