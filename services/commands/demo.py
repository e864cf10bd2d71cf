"""``cvtasks demo``: the main job on the embedded default, end to end on CPU.

synthetic shapes -> train the quickstart detector -> serve it on a free local port ->
detect every held-out image over gRPC -> annotated images + results JSON -> stop cleanly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, serve and query the quickstart detector (CPU, a few minutes)")
    p.add_argument("--out", default="demo_output", help="folder for data, model store, results and images")
    p.add_argument("--epochs", type=int, default=None, help="override the quickstart recipe's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def _train(out: Path, epochs: int | None, seed: int):
    from models.synth import generate_shapes
    from models.train.detection import QUICKSTART_SPLITS, quickstart_config, train_detection

    data = out / "data"
    print(f"[1/4] writing the synthetic shapes dataset to {data}", flush=True)
    generate_shapes(data, splits=QUICKSTART_SPLITS, image_size=128, seed=seed, progress=True)
    cfg = quickstart_config(data, out, seed=seed, **({"epochs": epochs} if epochs else {}))
    print(f"[2/4] training the quickstart detector ({cfg.architecture}, {cfg.epochs} epochs; CPU is fine)", flush=True)
    return data, train_detection(cfg)


SHOW_SCORE = 0.5  # boxes drawn on the annotated images; AP is computed from everything >= 0.05


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
            responses = client.detect_stream((p.read_bytes() for p in paths), score_threshold=0.05)
            for path, response in zip(paths, responses):
                rows.append(response_to_json(str(path), response))
                drawn.append(annotate(str(path), response, out / "annotated", min_score=SHOW_SCORE))
    print("      server stopped", flush=True)
    return rows, drawn


def _held_out_metrics(rows: list[dict], annotations: Path) -> dict[str, float]:
    """COCO AP of the service's answers against the held-out ground truth (pycocotools)."""
    from models.evaluation import coco_detection_metrics, coco_from_dict

    gt = json.loads(annotations.read_text())
    image_ids = {im["file_name"]: im["id"] for im in gt["images"]}
    category_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    results = [
        {"image_id": image_ids[Path(row["image"]).name], "category_id": category_ids[d["label"] - 1],
         "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]],
         "score": d["score"]}
        for row in rows for d in row.get("detections", [])
    ]
    return coco_detection_metrics(coco_from_dict(gt), results)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, result = _train(out, args.epochs, args.seed)
    rows, drawn = _detect_over_grpc(out, data)
    results = out / "detections.json"
    results.write_text(json.dumps(rows, indent=2) + "\n")
    found = sum(1 for r in rows for d in r.get("detections", []) if d["score"] >= SHOW_SCORE)
    held_out = _held_out_metrics(rows, data / "annotations" / "test.json")
    print("[4/4] done in {:.0f} s".format(time.perf_counter() - started))
    print(json.dumps({
        "held_out_test_metrics_from_the_service": {k: round(v, 3) for k, v in held_out.items()},
        "validation_metrics": {k: round(v, 3) for k, v in result.metrics.items()},
        "training_seconds": round(result.seconds, 1),
        "model": str(result.model_dir),
        "training_curves": str(result.plot),
        "detections_json": str(results),
        "annotated_images": f"{out / 'annotated'} ({len(drawn)} images, {found} boxes with score >= {SHOW_SCORE})",
    }, indent=2))
    return 0
