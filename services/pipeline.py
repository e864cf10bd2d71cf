"""The one request pipeline: model lookup -> options -> admission -> decode -> batcher -> task.

Every transport is a codec over it: the typed gRPC servicers (services/typed.py and one module a
task) and the KServe v2 path (services/kserve.py, services/kserve_tasks.py) turn their wire
request into a ``Call`` and the ``Answer`` into their wire response; what a request goes through
between the two is written here once, for every task and transport:

- the model named (or the task's default), at the version asked for, noted on the RPC's metrics;
- the task's options, checked against the model, before anything is decoded;
- admission (services/host.py ``Admission``): a model at capacity refuses at once, before decoding;
- decoding in the shared pool (services/imaging.py), one model input per image, or the inputs a
  request makes without images (generation's latents);
- every input submitted to the model's batcher at once (they may share a batch), under the
  request's deadline; one failing input cancels its siblings;
- the response encoded in the pool while the request still holds its admission, then the stage
  timings recorded (services/metrics.py).

    loaded = pipeline.model("detection", request.model.name)
    async with pipeline.run(loaded, Call(options=..., images=[...]), deadline) as answer:
        response = await pipeline.encode(build_response, request, answer)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from models.errors import InvalidInputError, UnknownModelError, shown
from models.options import Options
from services.host import BatchResult, Item, LoadedModel, ModelHost, ServingConfig
from services.imaging import Decoder, ImageData
from services.metrics import note_model, observe_stages

if TYPE_CHECKING:
    from models.checkpoints import ModelConfig

R = TypeVar("R")


@dataclass(frozen=True)
class Call:
    """One request as a codec hands it over.

    ``options``: option name -> value as the wire gave it (absent or None: the default).
    ``images``: encoded files or raw pixels, one model input each. ``inputs``: instead of images,
    how to make the model inputs from the model's config (generation's explicit latents); a task
    that takes no images and gets neither makes them from its options (a seed's latents).
    ``image_names``: what to call each image in an error ("IMAGE[1]"), when a request has several.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    images: Sequence[ImageData] = ()
    inputs: Callable[[ModelConfig], list[Any]] | None = None
    image_names: Sequence[str] = ()


@dataclass
class Answer:
    """What a request got: its model, options, the model inputs and (image tasks) the decoded
    RGB images (H, W, 3), one output each, and when its stages ran (time.perf_counter seconds)."""

    loaded: LoadedModel
    options: Options
    inputs: list[Any]
    images: list[np.ndarray]
    outputs: list[Any]
    started: float
    decoded: float
    results: list[BatchResult]
    done: float

    @property
    def config(self) -> ModelConfig:
        return self.loaded.config

    def stage_seconds(self, index: int = 0) -> dict[str, float]:
        """Seconds per stage of item ``index`` until now (see stage_seconds)."""
        return stage_seconds(self.started, self.decoded, self.results[index], self.done)


def stage_seconds(started: float, decoded: float, result: BatchResult, done: float) -> dict[str, float]:
    """Seconds per stage of one request item, from time.perf_counter stamps: preprocess (request
    start -> inputs ready), queue (-> its batch started), inference (the batch's model call),
    postprocess (batch end -> now: the response built) and total."""
    now = time.perf_counter()
    return {
        "preprocess": decoded - started,
        "queue": max(0.0, result.started - decoded),
        "inference": result.finished - result.started,
        "postprocess": now - min(done, result.finished),
        "total": now - started,
    }


class Pipeline:
    """The served models of every task (one ModelHost each) and the shared decoder."""

    def __init__(self, hosts: Sequence[ModelHost], decoder: Decoder, limits: ServingConfig = ServingConfig()) -> None:
        self.hosts = {host.task.name: host for host in hosts}
        self.decoder, self.limits = decoder, limits  # limits: the deadline policy of unary calls

    def model(self, task: str, name: str = "", version: str = "") -> LoadedModel:
        """The served ``task`` model called ``name`` ("": the task's default), at ``version``
        ("": the served one); noted as the RPC's model in its metrics."""
        loaded = self.hosts[task].get(name)
        if version and version != loaded.config.version:
            raise UnknownModelError(
                f"model `{loaded.config.name}` is version {loaded.config.version}; "
                f"version {shown(version)} is not served"
            )
        note_model(loaded.config.name)
        return loaded

    @contextlib.asynccontextmanager
    async def run(self, loaded: LoadedModel, call: Call, deadline: float | None) -> AsyncIterator[Answer]:
        """Run ``call`` on ``loaded``; the answer is valid in the block, which the request's
        admission covers (encode the response there); stage metrics are recorded at its end."""
        task, config = loaded.task, loaded.config
        options = task.options(config, call.options)  # bad options fail before anything is decoded
        ready = call.inputs(config) if call.inputs else None
        if ready is None and not task.takes_images:
            ready = task.inputs_of(config, options)
        pixels = (
            sum(task.input_pixels(config, x) for x in ready)
            if ready is not None
            else sum(self.decoder.pixels(image) for image in call.images)
        )
        with loaded.admission.admit(pixels):
            started = time.perf_counter()
            images, inputs = ([], ready) if ready is not None else await self._decode(loaded, call)
            decoded = time.perf_counter()
            results = await _submit_all(loaded, [Item(x, options) for x in inputs], deadline)
            answer = Answer(
                loaded,
                options,
                inputs,
                images,
                [r.value for r in results],
                started,
                decoded,
                results,
                time.perf_counter(),
            )
            yield answer
        for index in range(len(results)):
            observe_stages(config.name, answer.stage_seconds(index))

    async def encode(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` in the decode pool: building a response is CPU work (PNG encoding)."""
        return await self.decoder.run(fn, *args)

    async def _decode(self, loaded: LoadedModel, call: Call) -> tuple[list[np.ndarray], list[Any]]:
        if not call.images:
            raise InvalidInputError("the request has no image")
        task, config = loaded.task, loaded.config

        async def one(i: int, image: ImageData) -> tuple[np.ndarray, Any]:
            try:
                return await self.decoder.decode(image, lambda rgb: task.model_input(rgb, config))
            except InvalidInputError as exc:
                if not call.image_names:
                    raise
                raise type(exc)(f"{call.image_names[i]}: {exc}") from exc  # say which image was bad

        decoded = await asyncio.gather(*(one(i, image) for i, image in enumerate(call.images)))
        return [array for array, _ in decoded], [x for _, x in decoded]


async def _submit_all(loaded: LoadedModel, items: Sequence[Item], deadline: float | None) -> list[BatchResult]:
    """Queue every item at once (they may share a batch); a failure cancels the others."""
    tasks = [asyncio.ensure_future(loaded.submit(item, deadline=deadline)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()  # no-op for finished items
