"""``cvtasks classify IMAGE... --server HOST:PORT``: the most probable classes over gRPC, as JSON;
with ``--explain`` each image's Grad-CAM overlay saved as ``<out>/<stem>_explanation.png``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from models.options import ClassifyOptions
from services.commands.client_run import add_task_arguments, finish, image_row, run_files, timings_ms
from services.commands.flags import options_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_task_arguments(p, "classification", ClassifyOptions, timeout=60.0)
    p.add_argument("--out", default="explained", help="with --explain: folder for <stem>_explanation.png")
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any) -> dict[str, Any]:
    """One image's row: the labels as batch jobs write them (models.classification.labels_row)."""
    labels = [
        {"label": c.label, "class": c.class_name, "probability": round(c.probability, 5)} for c in response.classes
    ]
    return {**image_row(path, response), "labels": labels, "timings_ms": timings_ms(response)}


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

    return finish(*run_files(args, "classify_stream", options_from_args(args, ClassifyOptions), row), args.output)
