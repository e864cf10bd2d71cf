"""``cvtasks demo``: the main job on the embedded default, end to end on CPU.

synthetic shapes -> train the quickstart detector -> serve it on a free local port ->
detect every held-out image over gRPC -> annotated images + results JSON -> stop cleanly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

QUICKSTART_SPLITS = {"train": 600, "val": 60, "test": 40}
QUICKSTART_EPOCHS = 10


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, serve and query the quickstart detector (CPU, a few minutes)")
    p.add_argument("--out", default="demo_output", help="folder for data, model store, results and images")
    p.add_argument("--epochs", type=int, default=QUICKSTART_EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def _train(out: Path, epochs: int, seed: int):
    from models.synth import generate_shapes
    from models.train.detection import DetectionTrainConfig, train_detection

    data = out / "data"
    print(f"[1/4] writing the synthetic shapes dataset to {data}", flush=True)
    generate_shapes(data, splits=QUICKSTART_SPLITS, image_size=128, seed=seed, progress=True)
    print(f"[2/4] training the quickstart detector (fasterrcnn_tiny, {epochs} epochs, CPU is fine)", flush=True)
    cfg = DetectionTrainConfig(
        train_images=str(data / "images" / "train"), train_annotations=str(data / "annotations" / "train.json"),
        val_images=str(data / "images" / "val"), val_annotations=str(data / "annotations" / "val.json"),
        run_dir=str(out / "run"), model_store=str(out / "model_store"), name="quickstart-detector",
        epochs=epochs, seed=seed,
    )
    return data, train_detection(cfg)


def _detect_over_grpc(out: Path, data: Path) -> tuple[list[dict], list[Path]]:
    from services.client import CvtasksClient
    from services.commands.detect import annotate, response_to_json
    from services.launch import running_server

    paths = sorted((data / "images" / "test").glob("*.png"))
    rows, drawn = [], []
    print("[3/4] starting the detection server on a free local port", flush=True)
    with running_server(task="detection", model_store=out / "model_store") as address:
        print(f"      serving on {address}; detecting {len(paths)} held-out images over gRPC", flush=True)
        with CvtasksClient(address, timeout=30) as client:
            responses = client.detect_stream(p.read_bytes() for p in paths)
            for path, response in zip(paths, responses):
                rows.append(response_to_json(str(path), response))
                drawn.append(annotate(str(path), response, out / "annotated"))
    print("      server stopped", flush=True)
    return rows, drawn


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, result = _train(out, args.epochs, args.seed)
    rows, drawn = _detect_over_grpc(out, data)
    results = out / "detections.json"
    results.write_text(json.dumps(rows, indent=2) + "\n")
    found = sum(len(r.get("detections", [])) for r in rows)
    print("[4/4] done in {:.0f} s".format(time.perf_counter() - started))
    print(json.dumps({
        "validation_metrics": {k: round(v, 3) for k, v in result.metrics.items()},
        "training_seconds": round(result.seconds, 1),
        "model": str(result.model_dir),
        "training_curves": str(result.plot),
        "detections_json": str(results),
        "annotated_images": f"{out / 'annotated'} ({len(drawn)} images, {found} boxes)",
    }, indent=2))
    return 0
