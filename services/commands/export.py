"""``cvtasks export MODEL --format onnx|torchscript --out DIR``: a stored model as ONNX or
TorchScript, checked against the PyTorch model (models/export.py)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from models.export import FORMATS

    p.add_argument("model", help="model name in the store")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime) or torchscript (torch.jit)")
    p.add_argument("--out", required=True, help="folder to write: the export, its config.json and the weights")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from models import checkpoints
    from models.export import export_model

    folder, parity = export_model(checkpoints.resolve(args.model_store, args.model), args.format, args.out)
    print(json.dumps({"export": str(folder), "format": args.format, "parity": parity}, indent=2))
    return 0
