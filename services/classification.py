"""``cvtasks.v1.ClassificationService``: proto mapping only (the task is models/classification.py)."""

from __future__ import annotations

import numpy as np

from models.classification import Label
from models.visualize import draw_text_band
from services.pb import classification_pb2, classification_pb2_grpc
from services.pipeline import Answer
from services.typed import TypedService, model_ref, timings_proto


class ClassificationServicer(classification_pb2_grpc.ClassificationServiceServicer, TypedService):
    task, client_stream, stream_window = "classification", "classify_stream", 32
    unary_rpcs, stream_rpcs = {"Classify": "call"}, {"ClassifyStream": "call"}
    http_routes = {"classify": "Classify"}

    def picture(self, request: classification_pb2.ClassifyRequest, answer: Answer) -> np.ndarray:
        """The image above its most probable classes."""
        return draw_text_band(answer.images[0], [f"{x.class_name} {x.probability:.3f}" for x in answer.outputs[0]])

    def respond(
        self, request: classification_pb2.ClassifyRequest, answer: Answer
    ) -> classification_pb2.ClassifyResponse:
        height, width = answer.images[0].shape[:2]
        return classification_pb2.ClassifyResponse(
            request_id=request.request_id,
            model=model_ref(answer.config),
            classes=[
                classification_pb2.ClassProbability(label=x.label, class_name=x.class_name, probability=x.probability)
                for x in answer.outputs[0]
            ],
            image_width=width,
            image_height=height,
            timings=timings_proto(answer.stage_seconds()),
        )

    @staticmethod
    def output_of(response: classification_pb2.ClassifyResponse) -> list[Label]:
        return [Label(c.label, c.class_name, c.probability) for c in response.classes]
