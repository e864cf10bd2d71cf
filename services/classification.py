"""``cvtasks.v1.ClassificationService``: proto mapping only (the task is models/classification.py)."""

from __future__ import annotations

from models.classification import Label
from services.pb import classification_pb2, classification_pb2_grpc
from services.pipeline import Answer
from services.typed import TypedService


class ClassificationServicer(classification_pb2_grpc.ClassificationServiceServicer, TypedService):
    task, client_stream, stream_window = "classification", "classify_stream", 32
    unary_rpcs, stream_rpcs = {"Classify": "call"}, {"ClassifyStream": "call"}

    def respond(
        self, request: classification_pb2.ClassifyRequest, answer: Answer
    ) -> classification_pb2.ClassifyResponse:
        classes = [
            classification_pb2.ClassProbability(label=x.label, class_name=x.class_name, probability=x.probability)
            for x in answer.outputs[0]
        ]
        return classification_pb2.ClassifyResponse(**self.envelope(request, answer), classes=classes)

    @staticmethod
    def output_of(response: classification_pb2.ClassifyResponse) -> list[Label]:
        return [Label(c.label, c.class_name, c.probability) for c in response.classes]
