"""``cvtasks export MODEL --format onnx|torchscript --out DIR``: a stored model as ONNX or
TorchScript, checked against the PyTorch model (models/export.py)."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """what is written, per task (run by models.export.load_export):
  classification, segmentation, generation  model.onnx|model.ts: one tensor in, one out, batch dynamic
  detection   model.onnx|model.ts: one image (3, h, w) at the model's size -> boxes, scores, labels;
              batches run image by image, the resize and the boxes' scale back in Python
  captioning  encoder.* (images -> LSTM state) and step.* (tokens + state -> log-probs + state);
              greedy and beam search stay in Python around them
the export is refused (and its files removed) unless it agrees with the PyTorch model within
models.export.TOLERANCES; detectors and captioners are checked on --samples or synthetic scenes"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from models.export import FORMATS, MAX_SAMPLES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("model", help="model name in the store")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime) or torchscript (torch.jit)")
    p.add_argument("--out", required=True, help="folder to write: the export, its config.json and the weights")
    p.add_argument(
        "--samples",
        default=None,
        help=f"detectors and captioners: a folder of images to check the export on (the first {MAX_SAMPLES}; "
        "default: synthetic shapes scenes)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models import checkpoints
    from models.export import ExportError, export_model

    where = checkpoints.resolve(args.model_store, args.model)
    try:
        folder, parity = export_model(where, args.format, args.out, samples=args.samples)
    except ExportError as exc:  # checked and refused: the figures say by how much; nothing is left
        print(f"cvtasks export: refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"export": str(folder), "format": args.format, "parity": parity}, indent=2))
    return 0
