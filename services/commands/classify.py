"""``cvtasks classify IMAGE... --server HOST:PORT``: the most probable classes over gRPC, as JSON;
with ``--explain`` each image's Grad-CAM overlay saved as ``<out>/<stem>_explanation.png``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from models.options import ClassifyOptions
from services.commands.client_run import add_client_arguments, model_of, print_rows, run_files
from services.commands.flags import add_option_flags, options_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_client_arguments(p, "classification", timeout=60.0)
    add_option_flags(p, ClassifyOptions)
    p.add_argument("--output", default=None, help="write the JSON results to this file too")
    p.add_argument("--out", default="explained", help="with --explain: folder for <stem>_explanation.png")
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any) -> dict[str, Any]:
    """One image's row: the labels as batch jobs write them (models.classification.labels_row)."""
    return {
        "image": path,
        "model": model_of(response),
        "width": response.image_width,
        "height": response.image_height,
        "labels": [
            {"label": c.label, "class": c.class_name, "probability": round(c.probability, 5)} for c in response.classes
        ],
        "timings_ms": {
            "total": round(response.timings.total_ms, 2),
            "inference": round(response.timings.inference_ms, 2),
        },
    }


def run(args: argparse.Namespace) -> int:
    def row(path: str, response: Any) -> dict[str, Any]:
        found = response_to_json(path, response)
        if response.explanation_png:
            saved = Path(args.out) / f"{Path(path).stem}_explanation.png"
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_bytes(response.explanation_png)
            found["explanation"] = str(saved)
        best = found["labels"][0] if found["labels"] else {"class": "-", "probability": 0.0}
        print(f"{path}: {best['class']} ({best['probability']:.3f})", file=sys.stderr)
        return found

    rows, failed = run_files(args, "classify_stream", options_from_args(args, ClassifyOptions), row)
    print_rows(rows, args.output)
    return 1 if failed else 0
