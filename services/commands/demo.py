"""``cvtasks demo``: the main job on the embedded default, end to end on CPU.

synthetic shapes -> train the quickstart detector, U-Net, captioner, DCGAN and classifier ->
serve all five on a free local port -> detect, segment, caption and classify every held-out image
over gRPC, draw samples from the generator -> annotated images, masks, overlays, captions, labels,
a sample grid, results JSON and held-out metrics computed from the service's answers -> stop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

SHOW_SCORE = 0.5  # boxes drawn on the annotated images; AP is computed from everything >= 0.05


def stage(n: int, text: str) -> None:
    """The line that starts stage ``n`` of the demo's eight."""
    print(f"[{n}/8] {text}", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_output", help="folder for data, model store, results and images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def _train(out: Path, seed: int) -> tuple[Path, Any, Any, Any, Any, Any]:
    from models.synth import generate_classification, generate_shapes
    from models.train import captioning, classification, detection, generation, segmentation

    data = out / "data"
    stage(1, f"writing the synthetic shapes dataset to {data}")
    generate_shapes(data, splits=detection.QUICKSTART_SPLITS, image_size=128, seed=seed, progress=True)
    det_cfg = detection.quickstart_config(data, out, seed=seed)
    stage(2, f"training the quickstart detector ({det_cfg.architecture}, {det_cfg.epochs} epochs)")
    det = detection.train_detection(det_cfg)
    seg_cfg = segmentation.quickstart_config(data, out, arch="unet", seed=seed)
    stage(3, f"training the quickstart segmenter ({seg_cfg.architecture}/{seg_cfg.encoder}, {seg_cfg.epochs} epochs)")
    seg = segmentation.train_segmentation(seg_cfg)
    cap_cfg = captioning.quickstart_config(data, out, seed=seed)
    stage(
        4,
        f"training the quickstart captioner (Show and Tell, {cap_cfg.backbone} + LSTM, encoder "
        f"initialised from the U-Net's, {cap_cfg.epochs} epochs)",
    )
    cap = captioning.train_captioning(cap_cfg)
    gan_data = generation.quickstart_data(out / "data-generation", seed=seed)
    gan_cfg = generation.quickstart_config(gan_data, out, seed=seed)
    stage(
        5,
        f"training the quickstart DCGAN ({gan_cfg.image_size} px, on single shapes in {gan_data}, "
        f"{gan_cfg.epochs} epochs)",
    )
    gan = generation.train_generation(gan_cfg)
    cls_data = out / "data-classification"
    generate_classification(cls_data, splits=classification.QUICKSTART_SPLITS, image_size=128, seed=seed)
    cls_cfg = classification.quickstart_config(cls_data, out, seed=seed)
    stage(6, f"training the quickstart classifier ({cls_cfg.architecture}, {cls_cfg.epochs} epochs, on {cls_data})")
    cls = classification.train_classification(cls_cfg)
    return data, det, seg, cap, gan, cls


def _held_out_ap(rows: list[dict], annotations: Path) -> dict[str, float]:
    """COCO AP of the service's detections against the held-out ground truth (pycocotools)."""
    from models.evaluation import coco_detection_metrics, coco_from_dict

    gt = json.loads(annotations.read_text())
    image_ids = {im["file_name"]: im["id"] for im in gt["images"]}
    category_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    results = [
        {
            "image_id": image_ids[Path(row["image"]).name],
            "category_id": category_ids[d["label"] - 1],
            "bbox": [d["box"][0], d["box"][1], d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]],
            "score": d["score"],
        }
        for row in rows
        for d in row.get("detections", [])
    ]
    return coco_detection_metrics(coco_from_dict(gt), results)


def _detect(client: Any, paths: list[Path], out: Path) -> list[dict]:
    from services.commands.detect import annotate, response_to_json

    rows = []
    for path, response in zip(paths, client.detect_stream((p.read_bytes() for p in paths), score_threshold=0.05)):
        row = response_to_json(str(path), response)
        row["annotated"] = str(annotate(str(path), response, out / "annotated", min_score=SHOW_SCORE))
        rows.append(row)
    return rows


def _segment(client: Any, paths: list[Path], data: Path, out: Path, class_names: tuple[str, ...]):
    """Masks + overlays from the service; mIoU of its label maps against the held-out masks."""
    import torch

    from models.evaluation import SegmentationAccumulator
    from models.preprocessing import decode_image
    from models.seg_datasets import read_mask

    folder = out / "segmented"
    folder.mkdir(parents=True, exist_ok=True)
    totals = SegmentationAccumulator(class_names)
    overlays = []
    for path, response in zip(paths, client.segment_stream((p.read_bytes() for p in paths), overlay=True)):
        (folder / f"{path.stem}_mask.png").write_bytes(response.label_map_png)
        (folder / f"{path.stem}_overlay.png").write_bytes(response.overlay_png)
        labels = decode_image(response.label_map_png)[..., 0]  # gray PNG -> equal channels
        totals.add(torch.from_numpy(labels).long(), torch.from_numpy(read_mask(data / "masks" / "test" / path.name)))
        overlays.append((path, decode_image(response.overlay_png)))
    return totals.report(), _examples_sheet(overlays[:6], out / "segmentation_examples.png")


def _caption(client: Any, paths: list[Path], data: Path, out: Path) -> tuple[list[dict], dict, Path]:
    """Captions from the service (beam 3); corpus BLEU/CIDEr-D against the held-out references."""
    from models.caption_data import load_captions
    from models.preprocessing import read_image
    from models.train.captioning import score_captions
    from models.visualize import caption_sheet

    references = load_captions(data / "captions" / "test.json")
    rows = []
    for path, response in zip(paths, client.caption_stream((p.read_bytes() for p in paths), beam_size=3)):
        rows.append(
            {
                "image": str(path),
                "caption": response.captions[0].text,
                "log_prob": round(response.captions[0].log_prob, 4),
                "references": references[path.name],
            }
        )
    metrics = score_captions({Path(r["image"]).name: r["caption"] for r in rows}, references)
    sheet = caption_sheet(
        [(read_image(Path(r["image"])), r["caption"], r["references"][0]) for r in rows[:12]],
        out / "captioning_examples.png",
        title="quickstart captioner, held-out images (beam 3)",
    )
    return rows, metrics, sheet


def _classify(client: Any, data: Path, out: Path) -> tuple[list[dict], float, Path]:
    """The service's most probable class of each held-out image; top-1 against the folders' labels."""
    from models.class_datasets import image_folder
    from models.preprocessing import read_image
    from models.visualize import caption_sheet

    classes, items = image_folder(data / "images" / "test")
    rows = []
    for (path, label), response in zip(items, client.classify_stream((p.read_bytes() for p, _ in items), top_k=1)):
        best = response.classes[0]
        found = {"class": best.class_name, "probability": round(best.probability, 4), "true_class": classes[label]}
        rows.append({"image": str(path), **found})
    top1 = sum(r["class"] == r["true_class"] for r in rows) / max(1, len(rows))
    shown = [(read_image(Path(r["image"])), f"{r['class']} ({r['probability']:.2f})", r["true_class"]) for r in rows]
    sheet = caption_sheet(
        shown[:12], out / "classification_examples.png", title="quickstart classifier (true class below)"
    )
    return rows, top1, sheet


def _generate(client: Any, out: Path, *, seeds: int = 8) -> tuple[Any, Path]:
    """64 images per seed from the service: all of them ((N, C, S, S) in [-1, 1]) and the seed-0 grid."""
    import cv2
    import numpy as np
    import torch

    from models.generation import image_grid
    from models.preprocessing import decode_image
    from models.train.generation import gan_input

    batches = [
        np.stack([decode_image(im.png) for im in client.generate(count=64, seed=s).images]) for s in range(seeds)
    ]
    grid = cv2.resize(image_grid(batches[0]), None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
    target = out / "generated_samples.png"
    cv2.imwrite(str(target), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    drawn = torch.stack([gan_input(image, size=image.shape[0], channels=3) for batch in batches for image in batch])
    return drawn, target


def _score_generated(drawn: Any, gan_data: Path, model_dir: Path) -> dict:
    """Fréchet distance and recognised share of the service's samples next to an untrained generator's."""
    from models import checkpoints
    from models.gen_metrics import evaluate_generator

    model_args = dict(checkpoints.load_config(model_dir).model_args)  # the samples are drawn: no weights needed
    report, _ = evaluate_generator(None, model_args, gan_data, generated=drawn)
    return report


def _examples_sheet(pairs: list, target: Path) -> Path:
    """Images on the top row, their segmentation overlays below: one PNG to look at."""
    import cv2
    import numpy as np

    from models.preprocessing import read_image

    top = np.hstack([read_image(p) for p, _ in pairs])
    bottom = np.hstack([overlay for _, overlay in pairs])
    sheet = cv2.resize(np.vstack([top, bottom]), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(target), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return target


def run(args: argparse.Namespace) -> int:
    from models import checkpoints
    from services.client import CvtasksClient
    from services.launch import running_server

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, det, seg, cap, gan, cls = _train(out, args.seed)
    paths = sorted((data / "images" / "test").glob("*.png"))
    stage(7, "serving the five models on a free local port")
    tasks = ["detection", "segmentation", "captioning", "generation", "classification"]
    with running_server(task=tasks, model_store=out / "model_store") as address:
        print(
            f"      serving on {address}; detecting, segmenting and captioning {len(paths)} held-out images, "
            "classifying the classifier's, and drawing 512 generated ones over gRPC",
            flush=True,
        )
        with CvtasksClient(address, timeout=60) as client:
            rows = _detect(client, paths, out)
            classes = checkpoints.load_config(seg.model_dir).classes
            seg_report, sheet = _segment(client, paths, data, out, classes)
            captions, cap_metrics, cap_sheet = _caption(client, paths, data, out)
            drawn, gan_grid = _generate(client, out)
            labels, cls_top1, cls_sheet = _classify(client, out / "data-classification", out)
    print("      server stopped; scoring the generated images", flush=True)
    gan_report = _score_generated(drawn, out / "data-generation", gan["model_dir"])
    (out / "detections.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "segmentation_metrics.json").write_text(json.dumps(seg_report.to_json(), indent=2) + "\n")
    (out / "captions.json").write_text(json.dumps(captions, indent=2) + "\n")
    (out / "classifications.json").write_text(json.dumps(labels, indent=2) + "\n")
    boxes = sum(1 for r in rows for d in r.get("detections", []) if d["score"] >= SHOW_SCORE)
    for row in captions[:5]:
        print(f'      {Path(row["image"]).name}: "{row["caption"]}"   (reference: "{row["references"][0]}")')
    stage(8, f"done in {time.perf_counter() - started:.0f} s")
    print(
        json.dumps(
            {
                "detection": {
                    "held_out_metrics_from_the_service": {
                        k: round(v, 3) for k, v in _held_out_ap(rows, data / "annotations" / "test.json").items()
                    },
                    "training_seconds": round(det.seconds, 1),
                    "model": str(det.model_dir),
                    "curves": str(det.plot),
                    "results": str(out / "detections.json"),
                    "annotated_images": f"{out / 'annotated'} ({len(rows)} images, "
                    f"{boxes} boxes with score >= {SHOW_SCORE})",
                },
                "segmentation": {
                    "held_out_mIoU_from_the_service": round(seg_report.miou, 3),
                    "held_out_IoU_per_class": {k: round(v, 3) for k, v in seg_report.iou.items()},
                    "training_seconds": round(seg.seconds, 1),
                    "model": str(seg.model_dir),
                    "curves": str(seg.plot),
                    "masks_and_overlays": str(out / "segmented"),
                    "examples": str(sheet),
                },
                "captioning": {
                    "held_out_metrics_from_the_service": {k: round(v, 3) for k, v in cap_metrics.items()},
                    "training_seconds": round(cap["seconds"], 1),
                    "model": str(cap["model_dir"]),
                    "curves": str(cap["plot"]),
                    "captions": str(out / "captions.json"),
                    "examples": str(cap_sheet),
                },
                "generation": {
                    "samples_from_the_service": gan_report["samples"],
                    "frechet_distance": round(gan_report["model"]["frechet_distance"], 2),
                    "untrained_baseline_frechet_distance": round(
                        gan_report["untrained baseline"]["frechet_distance"], 2
                    ),
                    "frechet_ratio_to_baseline": round(gan_report["frechet_ratio_to_baseline"], 3),
                    "recognised_share": round(gan_report["model"]["recognised_share"], 3),
                    "training_seconds": round(gan["seconds"], 1),
                    "model": str(gan["model_dir"]),
                    "losses": str(gan["plot"]),
                    "sample_grid": str(gan_grid),
                },
                "classification": {
                    "held_out_top1_from_the_service": round(cls_top1, 3),
                    "held_out_images": len(labels),
                    "training_seconds": round(cls.seconds, 1),
                    "model": str(cls.model_dir),
                    "curves": str(cls.plot),
                    "results": str(out / "classifications.json"),
                    "examples": str(cls_sheet),
                },
            },
            indent=2,
        )
    )
    return 0
