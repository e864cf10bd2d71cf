"""``cvtasks.v1.ClassificationService``: proto mapping only (the task is models/classification.py)."""

from __future__ import annotations

import numpy as np

from models.classification import Classification, Label
from models.explain import heatmap_png_pixels, overlay_heatmap
from models.preprocessing import decode_image, encode_image
from models.visualize import draw_text_band
from services.pb import classification_pb2, classification_pb2_grpc
from services.pipeline import Answer
from services.typed import TypedService


class ClassificationServicer(classification_pb2_grpc.ClassificationServiceServicer, TypedService):
    task, client_stream, stream_window = "classification", "classify_stream", 32
    unary_rpcs, stream_rpcs = {"Classify": "call"}, {"ClassifyStream": "call"}
    http_routes = {"classify": "Classify"}

    def picture(self, request: classification_pb2.ClassifyRequest, answer: Answer) -> np.ndarray:
        """The image (with ``explain``: its Grad-CAM overlay) above its most probable classes."""
        image, found = answer.images[0], answer.outputs[0]
        heatmap = found.explanation_map(image.shape[:2])
        shown = image if heatmap is None else overlay_heatmap(image, heatmap)
        return draw_text_band(shown, [f"{x.class_name} {x.probability:.3f}" for x in found.labels])

    def respond(
        self, request: classification_pb2.ClassifyRequest, answer: Answer
    ) -> classification_pb2.ClassifyResponse:
        image, found = answer.images[0], answer.outputs[0]
        classes = [
            classification_pb2.ClassProbability(label=x.label, class_name=x.class_name, probability=x.probability)
            for x in found.labels
        ]
        response = classification_pb2.ClassifyResponse(**self.envelope(request, answer), classes=classes)
        heatmap = found.explanation_map(image.shape[:2])
        if heatmap is not None:
            response.explanation_png = encode_image(overlay_heatmap(image, heatmap), "png")
            response.heatmap_png = encode_image(heatmap_png_pixels(heatmap), "png")
        return response

    @staticmethod
    def output_of(response: classification_pb2.ClassifyResponse) -> Classification:
        labels = [Label(c.label, c.class_name, c.probability) for c in response.classes]
        heatmap = None
        if response.heatmap_png:  # a remote batch job draws its overlay from it
            heatmap = (decode_image(response.heatmap_png)[..., 0] / 255.0).astype(np.float32)
        return Classification(labels, heatmap)
