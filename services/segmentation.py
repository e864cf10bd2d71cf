"""``cvtasks.v1.SegmentationService``: proto mapping only (the task is models/segmentation.py)."""

from __future__ import annotations

import numpy as np

from models.preprocessing import encode_image
from models.segmentation import Segmentation, class_areas, class_contours, labels_from_png
from models.visualize import overlay_labels
from services.pb import segmentation_pb2, segmentation_pb2_grpc
from services.pipeline import Answer
from services.typed import TypedService


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer, TypedService):
    task, client_stream = "segmentation", "segment_stream"
    unary_rpcs, stream_rpcs = {"Segment": "call"}, {"SegmentStream": "call"}
    http_routes = {"segment": "Segment"}

    def picture(self, request: segmentation_pb2.SegmentRequest, answer: Answer) -> np.ndarray:
        """The image with each class blended on in its colour (the overlay)."""
        return overlay_labels(answer.images[0], answer.outputs[0].labels, alpha=answer.options.overlay_alpha)

    def respond(self, request: segmentation_pb2.SegmentRequest, answer: Answer) -> segmentation_pb2.SegmentResponse:
        """The label map PNG, class areas, and the overlay and contours when asked for."""
        seg, options, names = answer.outputs[0], answer.options, answer.config.classes
        response = segmentation_pb2.SegmentResponse(
            **self.envelope(request, answer),
            label_map_png=encode_image(seg.labels, "png"),
            processing_detail=seg.detail,
            processing=segmentation_pb2.Processing.Value(f"PROCESSING_{seg.processing.upper()}"),
            areas=[
                segmentation_pb2.ClassArea(class_id=i, class_name=n, pixel_count=c, area_fraction=f)
                for i, n, c, f in class_areas(seg.labels, names)
            ],
        )
        if options.include_contours:
            for class_id, name, polygons in class_contours(seg.labels, names):
                response.contours.add(
                    class_id=class_id,
                    class_name=name,
                    polygons=[
                        segmentation_pb2.Polygon(points=[segmentation_pb2.Point(x=int(x), y=int(y)) for x, y in poly])
                        for poly in polygons
                    ],
                )
        if options.include_overlay:
            blended = overlay_labels(answer.images[0], seg.labels, alpha=options.overlay_alpha)
            response.overlay_png = encode_image(blended, "png")
        return response

    @staticmethod
    def output_of(response: segmentation_pb2.SegmentResponse) -> Segmentation:
        processing = segmentation_pb2.Processing.Name(response.processing).removeprefix("PROCESSING_").lower()
        return Segmentation(labels_from_png(response.label_map_png), processing, "served")
