"""CaptioningService: converts protos <-> models.captioning, nothing else."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import torch
from torch import nn

from models import checkpoints
from models.captioning import Caption, CaptionSettings, caption_batch, image_input
from models.text import Vocabulary
from services.host import LoadedModel, ModelHost
from services.imaging import Decoder
from services.pb import captioning_pb2, captioning_pb2_grpc, common_pb2
from services.streaming import deadline_of, ordered_stream, timings_proto

DEFAULT_MAX_LENGTH = 20


@dataclass(frozen=True)
class CaptionItem:
    image: torch.Tensor  # (3, S, S) normalised, CPU
    settings: CaptionSettings


class CaptioningRuntime:
    """How the ModelHost runs a batch of CaptionItems (same input size: one encoder pass per
    group of equal decoding options)."""

    task = "captioning"

    def warmup_item(self, config: checkpoints.ModelConfig, device: torch.device) -> CaptionItem:
        side = config.input_size or 224
        return CaptionItem(torch.zeros(3, side, side), CaptionSettings(max_length=max_length_of(config)))

    def run_batch(self, model: nn.Module, config: checkpoints.ModelConfig,
                  items: Sequence[CaptionItem]) -> list[list[Caption]]:
        device = next(model.parameters()).device
        images = torch.stack([item.image for item in items]).to(device, non_blocking=True)
        return caption_batch(model, images, [item.settings for item in items])


def max_length_of(config: checkpoints.ModelConfig) -> int:
    """The model's trained caption length: the default max_length of a request."""
    return int(config.extra.get("max_length", DEFAULT_MAX_LENGTH))


@functools.lru_cache(maxsize=32)
def _vocabulary(name: str, version: str, words: tuple[str, ...]) -> Vocabulary:
    return Vocabulary(words)


def vocabulary_of(config: checkpoints.ModelConfig) -> Vocabulary:
    return _vocabulary(config.name, config.version, tuple(config.extra["vocab"]["words"]))


def settings_of(request: captioning_pb2.CaptionRequest, loaded: LoadedModel) -> CaptionSettings:
    o, defaults = request.options, CaptionSettings()
    return CaptionSettings(
        beam_size=o.beam_size if o.HasField("beam_size") else defaults.beam_size,
        max_length=o.max_length if o.HasField("max_length") else max_length_of(loaded.config),
        num_captions=o.num_captions if o.HasField("num_captions") else defaults.num_captions,
        length_penalty=o.length_penalty if o.HasField("length_penalty") else defaults.length_penalty,
    ).check()


def captions_proto(captions: Sequence[Caption], vocab: Vocabulary) -> list[captioning_pb2.GeneratedCaption]:
    out = []
    for c in captions:
        text = vocab.decode(c.tokens)
        out.append(captioning_pb2.GeneratedCaption(text=text, tokens=text.split(), log_prob=c.log_prob,
                                                   score=c.score))
    return out


class CaptioningServicer(captioning_pb2_grpc.CaptioningServiceServicer):
    """``cvtasks.v1.CaptioningService`` over a ModelHost of captioning models."""

    service_name = captioning_pb2.DESCRIPTOR.services_by_name["CaptioningService"].full_name

    def __init__(self, host: ModelHost, decoder: Decoder, *, stream_window: int = 16) -> None:
        self.host, self.decoder, self.stream_window = host, decoder, stream_window

    def add_to_server(self, server: grpc.aio.Server) -> None:
        captioning_pb2_grpc.add_CaptioningServiceServicer_to_server(self, server)

    async def Caption(self, request: captioning_pb2.CaptionRequest, context: grpc.aio.ServicerContext):
        return await self._caption(request, deadline_of(context, self.host.serving))

    async def CaptionStream(self, request_iterator: AsyncIterator[captioning_pb2.CaptionRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[captioning_pb2.CaptionResponse]:
        deadline = deadline_of(context)

        def failed(request, error: common_pb2.ItemError) -> captioning_pb2.CaptionResponse:
            return captioning_pb2.CaptionResponse(request_id=request.request_id, error=error)

        async for response in ordered_stream(request_iterator, lambda r: self._caption(r, deadline),
                                             on_error=failed, window=self.stream_window):
            yield response

    async def _caption(self, request: captioning_pb2.CaptionRequest, deadline: float | None):
        t0 = time.perf_counter()
        loaded = self.host.get(request.model.name)
        settings = settings_of(request, loaded)
        size = loaded.config.input_size or 224
        with loaded.admission.admit(self.decoder.pixels(request.image)):
            array, tensor = await self.decoder.decode(request.image, functools.partial(image_input, size=size))
            t1 = time.perf_counter()
            result = await loaded.submit(CaptionItem(tensor, settings), deadline=deadline)
        t2 = time.perf_counter()
        response = captioning_pb2.CaptionResponse(
            request_id=request.request_id, image_width=array.shape[1], image_height=array.shape[0],
            model=common_pb2.ModelRef(name=loaded.config.name, version=loaded.config.version),
            captions=captions_proto(result.value, vocabulary_of(loaded.config)))
        response.timings.CopyFrom(timings_proto(t0, t1, result, t2))
        return response
