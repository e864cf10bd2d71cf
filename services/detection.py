"""``cvtasks.v1.DetectionService``: proto mapping only (the task is models/detection.py)."""

from __future__ import annotations

import numpy as np

from models.visualize import draw_detections
from services.pb import common_pb2, detection_pb2, detection_pb2_grpc
from services.pipeline import Answer
from services.typed import TypedService


class DetectionServicer(detection_pb2_grpc.DetectionServiceServicer, TypedService):
    task, client_stream, stream_window = "detection", "detect_stream", 32
    unary_rpcs, stream_rpcs = {"Detect": "call"}, {"DetectStream": "call"}
    http_routes = {"detect": "Detect"}

    def picture(self, request: detection_pb2.DetectRequest, answer: Answer) -> np.ndarray:
        """The image with its boxes, class names and scores drawn."""
        return draw_detections(answer.images[0], answer.outputs[0])

    def respond(self, request: detection_pb2.DetectRequest, answer: Answer) -> detection_pb2.DetectResponse:
        detections = [
            detection_pb2.Detection(
                box=common_pb2.BoundingBox(x_min=d.box[0], y_min=d.box[1], x_max=d.box[2], y_max=d.box[3]),
                score=d.score,
                label=d.label,
                class_name=d.class_name,
            )
            for d in answer.outputs[0]
        ]
        return detection_pb2.DetectResponse(**self.envelope(request, answer), detections=detections)

    @staticmethod
    def output_of(response: detection_pb2.DetectResponse) -> list:
        from services.client import detections_from_proto

        return detections_from_proto(response)
