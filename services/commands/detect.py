"""``cvtasks detect IMAGE... --server HOST:PORT``: detect over gRPC, print JSON, draw boxes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, BMP, TIFF)")
    p.add_argument("--server", default="localhost:50051", help="HOST:PORT of `cvtasks serve --task detection`")
    p.add_argument("--model", default="", help="model name (default: the server's default model)")
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--max-detections", type=int, default=None)
    p.add_argument("--classes", nargs="*", default=(), help="keep only these class names")
    p.add_argument("--annotate-dir", default=None, help="write each image with its boxes drawn here")
    p.add_argument("--output", default=None, help="write the JSON results to this file too")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any) -> dict[str, Any]:
    from services.client import detections_from_proto

    if response.HasField("error"):
        return {"image": path, "error": {"code": response.error.code, "message": response.error.message}}
    return {
        "image": path,
        "model": {"name": response.model.name, "version": response.model.version},
        "width": response.image_width,
        "height": response.image_height,
        "detections": [
            {"box": [round(v, 2) for v in d.box], "score": round(d.score, 4), "label": d.label, "class": d.class_name}
            for d in detections_from_proto(response)
        ],
        "timings_ms": {k: round(getattr(response.timings, k), 2)
                       for k in ("decode_ms", "queue_ms", "inference_ms", "postprocess_ms", "total_ms")},
    }


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
    from services.client import CvtasksClient

    paths = [str(p) for p in args.images]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file(s): {', '.join(missing)}")
    results, failed = [], 0
    with CvtasksClient.from_env(args.server, timeout=args.timeout) as client:
        responses = client.detect_stream(
            (Path(p).read_bytes() for p in paths), model=args.model, score_threshold=args.score_threshold,
            max_detections=args.max_detections, classes=args.classes,
        )
        for path, response in zip(paths, responses):
            row = response_to_json(path, response)
            if "error" in row:
                failed += 1
                print(f"{path}: {row['error']['message']}", file=sys.stderr)
            elif args.annotate_dir:
                row["annotated"] = str(annotate(path, response, Path(args.annotate_dir)))
            results.append(row)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 1 if failed else 0
