"""The one registry of the serving layer: task name -> its transports (an explicit table).

Each task's typed gRPC servicer (which also maps its responses back for remote batch jobs) and
its KServe v2 codec. A new task is its servicer module, its codec in services/kserve_tasks.py and
one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.registry import Registry
from services.captioning import CaptioningServicer
from services.classification import ClassificationServicer
from services.detection import DetectionServicer
from services.generation import GenerationServicer
from services.kserve_tasks import (
    CaptioningCodec,
    ClassificationCodec,
    Codec,
    DetectionCodec,
    GenerationCodec,
    SegmentationCodec,
)
from services.segmentation import SegmentationServicer
from services.typed import TypedService


@dataclass(frozen=True)
class Transports:
    typed: type[TypedService]
    kserve: Codec


SERVICES: Registry[Transports] = Registry("served task")
SERVICES.add("detection", Transports(DetectionServicer, DetectionCodec()))
SERVICES.add("segmentation", Transports(SegmentationServicer, SegmentationCodec()))
SERVICES.add("captioning", Transports(CaptioningServicer, CaptioningCodec()))
SERVICES.add("generation", Transports(GenerationServicer, GenerationCodec()))
SERVICES.add("classification", Transports(ClassificationServicer, ClassificationCodec()))
