"""``cvtasks.v1.CaptioningService``: proto mapping only (the task is models/captioning.py)."""

from __future__ import annotations

import numpy as np

from models.captioning import CaptionText
from models.visualize import draw_text_band
from services.pb import captioning_pb2, captioning_pb2_grpc
from services.pipeline import Answer
from services.typed import TypedService


class CaptioningServicer(captioning_pb2_grpc.CaptioningServiceServicer, TypedService):
    task, client_stream = "captioning", "caption_stream"
    unary_rpcs, stream_rpcs = {"Caption": "call"}, {"CaptionStream": "call"}
    http_routes = {"caption": "Caption"}

    def picture(self, request: captioning_pb2.CaptionRequest, answer: Answer) -> np.ndarray:
        """The image above its captions, best first."""
        return draw_text_band(answer.images[0], [f"{c.text} ({c.log_prob:.2f})" for c in answer.outputs[0]])

    def respond(self, request: captioning_pb2.CaptionRequest, answer: Answer) -> captioning_pb2.CaptionResponse:
        captions = [
            captioning_pb2.GeneratedCaption(text=c.text, tokens=c.text.split(), log_prob=c.log_prob, score=c.score)
            for c in answer.outputs[0]
        ]
        return captioning_pb2.CaptionResponse(**self.envelope(request, answer), captions=captions)

    @staticmethod
    def output_of(response: captioning_pb2.CaptionResponse) -> list[CaptionText]:
        return [CaptionText(c.text, c.log_prob, c.score) for c in response.captions]
