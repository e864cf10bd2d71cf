"""``cvtasks detect IMAGE... --server HOST:PORT``: detect over gRPC, print JSON, draw boxes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.options import DetectOptions
from services.commands.client_run import add_task_arguments, finish, image_row, run_files, timings_ms
from services.commands.flags import options_from_args

STAGES = ("decode_ms", "queue_ms", "inference_ms", "postprocess_ms", "total_ms")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_task_arguments(p, "detection", DetectOptions, timeout=30.0, skip={"annotate"})
    p.add_argument("--annotate-dir", default=None, help="write each image with its boxes drawn here")
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any) -> dict[str, Any]:
    from models.detection import detection_row
    from services.client import detections_from_proto

    found = detection_row(detections_from_proto(response))
    return {**image_row(path, response), **found, "timings_ms": timings_ms(response, STAGES, short=False)}


def annotate(path: str, response: Any, out_dir: Path, *, min_score: float = 0.0) -> Path:
    """Draw the response's boxes (score >= min_score) on the image file; writes ``out_dir/<stem>.jpg``."""
    import cv2

    from models.preprocessing import read_image
    from models.visualize import draw_detections
    from services.client import detections_from_proto

    shown = [d for d in detections_from_proto(response) if d.score >= min_score]
    drawn = draw_detections(read_image(path), shown)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{Path(path).stem}.jpg"
    cv2.imwrite(str(target), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    return target


def run(args: argparse.Namespace) -> int:
    def row(path: str, response: Any) -> dict[str, Any]:
        found = response_to_json(path, response)
        if args.annotate_dir:
            found["annotated"] = str(annotate(path, response, Path(args.annotate_dir)))
        return found

    return finish(*run_files(args, "detect_stream", options_from_args(args, DetectOptions), row), args.output)
