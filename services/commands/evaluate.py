"""``cvtasks eval TASK``: evaluate a stored model on a dataset split."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.commands.train import ANNOTATIONS, CAPTIONS, CLASS_LABELS, MASKS, Labels, add_data_args, data_paths


@dataclass(frozen=True)
class Evaluation:
    """One task's ``cvtasks eval`` sub-command: what it reports, what ``--out`` receives, how the
    test split is given (the train command's data flags), and its own flags."""

    help: str
    out: str  # --out's help
    run: Callable[[argparse.Namespace], int]
    labels: Labels | None = None  # --data / --test-images / --test-<labels>; None: its own flags
    extra: Callable[[argparse.ArgumentParser], None] = lambda p: None


def _batch_size(default: int) -> Callable[[argparse.ArgumentParser], None]:
    return lambda p: p.add_argument("--batch-size", type=int, default=default)


def _captioning_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-sizes", type=int, nargs="+", default=[1, 3], help="decode with each beam size (1 = greedy)")
    p.add_argument("--max-length", type=int, default=None, help="default: the model's training max_length")


def _classification_flags(p: argparse.ArgumentParser) -> None:
    _batch_size(32)(p)
    p.add_argument("--mistakes", type=int, default=16, help="the most confident mistakes shown in mistakes.png")


def _generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="labelled real images in the `cvtasks data synth` layout (images/<split>/, "
        "annotations/<split>.json; each image labelled by its largest box)",
    )
    p.add_argument("--train-split", default="train", help="real images the feature classifier learns from")
    p.add_argument("--test-split", default="test", help="real images the samples are compared with")
    p.add_argument("--samples", type=int, default=500, help="generated images to score")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of the untrained baseline")
    p.add_argument("--confidence", type=float, default=0.9, help="top class probability that counts as recognised")
    p.add_argument("--classifier-epochs", type=int, default=8)


def _evaluations() -> dict[str, Evaluation]:
    return {
        "detection": Evaluation(
            "COCO AP, AP50, AP75 (pycocotools) of a stored detector",
            "also write the metrics JSON here",
            run_detection,
            ANNOTATIONS,
            _batch_size(8),
        ),
        "segmentation": Evaluation(
            "mIoU, per-class IoU/Dice, pixel accuracy, confusion matrix",
            "folder for metrics.json and confusion.png",
            run_segmentation,
            MASKS,
        ),
        "captioning": Evaluation(
            "corpus BLEU-1..4 and CIDEr-D against all reference captions",
            "folder for metrics.json, captions.json and examples.png",
            run_captioning,
            CAPTIONS,
            _captioning_flags,
        ),
        "classification": Evaluation(
            "top-1 / top-5 accuracy, per-class precision/recall/F1, confusion matrix, calibration (ECE)",
            "folder for metrics.json, confusion.png, reliability.png and mistakes.png",
            run_classification,
            CLASS_LABELS,
            _classification_flags,
        ),
        "generation": Evaluation(
            "Fréchet distance and recognised share vs an untrained baseline",
            "folder for metrics.json and sample grids",
            run_generation,
            extra=_generation_flags,
        ),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    task_sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, evaluation in _evaluations().items():
        p = task_sub.add_parser(task, help=evaluation.help)
        p.add_argument("--model", required=True, help="model name in the store")
        p.add_argument("--model-store", default="model_store")
        p.add_argument("--device", default=None)
        p.add_argument("--out", default=None, help=evaluation.out)
        if evaluation.labels is not None:
            add_data_args(p, evaluation.labels, splits=("test",))
        evaluation.extra(p)
        p.set_defaults(run=evaluation.run)


def load_model(args: argparse.Namespace, task: str, noun: str, *, device: str = "") -> tuple[Any, Any, Any]:
    """(model, config, device) of ``--model`` in ``--model-store``, on ``device`` (default: ``--device``,
    else CUDA when available); ValueError unless it is a ``task`` model (``noun``: what the message
    calls one, e.g. "a classifier")."""
    from models import checkpoints
    from models.train.common import pick_device

    device = pick_device(device or args.device)
    model, config = checkpoints.load_model(checkpoints.resolve(args.model_store, args.model), device=device)
    if config.task != task:
        raise ValueError(f"model {args.model} is a {config.task} model, not {noun}")
    return model, config, device


def write_metrics(args: argparse.Namespace, report: dict[str, Any]) -> Path:
    """``<--out>/metrics.json`` (the folder made); returns the folder."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def run_detection(args: argparse.Namespace) -> int:
    from models.datasets import CocoDetectionDataset
    from models.evaluation import coco_from_dict, evaluate_detector

    images, annotations = data_paths(args, ANNOTATIONS, "test")
    model, config, device = load_model(args, "detection", "a detector")
    dataset = CocoDetectionDataset(images, annotations)
    if list(dataset.class_names) != list(config.classes):
        raise ValueError(f"dataset classes {list(dataset.class_names)} differ from the model's {list(config.classes)}")
    gt = coco_from_dict(json.loads(Path(annotations).read_text()))
    metrics = evaluate_detector(
        model,
        dataset,
        gt=gt,
        label_to_category=dataset.label_to_category,
        device=device,
        batch_size=args.batch_size,
        per_class=True,
    )
    report = {"model": config.name, "version": config.version, "images": len(dataset), **metrics}
    for name, scores in metrics["per_class"].items():  # a table for people; the JSON on stdout has it too
        print(f"  {name:16s} AP {scores['AP']:.4f}   AP50 {scores['AP50']:.4f}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_segmentation(args: argparse.Namespace) -> int:
    from models.evaluation import evaluate_segmenter, plot_confusion
    from models.seg_datasets import SegmentationDataset

    images, masks = data_paths(args, MASKS, "test")
    model, config, device = load_model(args, "segmentation", "a segmenter")
    dataset = SegmentationDataset(images, masks, class_names=config.classes)
    report = evaluate_segmenter(
        model, dataset, device=device, mean=config.normalization["mean"], std=config.normalization["std"]
    )
    print(f"model {config.name} v{config.version} on {len(dataset)} images")
    print(f"mIoU {report.miou:.4f}   pixel accuracy {report.pixel_accuracy:.4f}")
    for name in config.classes:
        print(f"  {name:16s} IoU {report.iou[name]:.4f}   Dice {report.dice[name]:.4f}")
    print("confusion matrix (pixels):")
    print(report.confusion_text())
    if args.out:
        out = write_metrics(args, report.to_json())
        print(f"wrote {out / 'metrics.json'} and {plot_confusion(report, out / 'confusion.png')}")
    return 0


def run_classification(args: argparse.Namespace) -> int:
    from models.class_datasets import ClassificationDataset, load_items
    from models.class_metrics import ECE_BINS, mistakes_sheet, plot_reliability
    from models.evaluation import evaluate_classifier, evaluate_multi_label, plot_confusion
    from models.preprocessing import read_image

    images, labels = data_paths(args, CLASS_LABELS, "test")
    model, config, device = load_model(args, "classification", "a classifier")
    multi = bool(config.extra.get("multi_label"))
    classes, items = load_items(images, labels, config.classes, multi_label=multi)
    norm = config.normalization
    dataset = ClassificationDataset(items, classes, size=config.input_size or 224, mean=norm["mean"], std=norm["std"])
    if multi:
        return _report_multi_label(args, config, evaluate_multi_label(model, dataset, device=device))
    report = evaluate_classifier(model, dataset, device=device, batch_size=args.batch_size)
    print(f"model {config.name} v{config.version} on {len(dataset)} images")
    print(f"top-1 {report.top1:.4f}   top-5 {report.top5:.4f}")
    for name in config.classes:
        scores = (f"{key} {getattr(report, key)[name]:.4f}" for key in ("precision", "recall", "f1"))
        print(f"  {name:16s} " + "   ".join(scores))
    print("confusion matrix (images):")
    print(report.confusion_text())
    print(f"expected calibration error ({ECE_BINS} confidence bins): {report.ece:.4f}")
    if args.out:
        out = write_metrics(args, {"model": config.name, "version": config.version, **report.to_json()})
        plots = [plot_confusion(report, out / "confusion.png")]
        plots.append(plot_reliability(report.reliability(), out / "reliability.png", title=config.name))
        sheet, shown = mistakes_sheet(
            lambda i: read_image(items[i][0]),
            report.labels.tolist(),
            report.predicted.tolist(),
            report.confidence.tolist(),
            classes,
            out / "mistakes.png",
            count=args.mistakes,
            title=config.name,
        )
        print(f"wrote {out / 'metrics.json'}, {', '.join(map(str, plots))} and {sheet} ({shown} mistakes)")
    return 0


def _report_multi_label(args: argparse.Namespace, config: Any, report: Any) -> int:
    """Print (and with --out write) a multi-label model's MultiLabelReport."""
    print(f"model {config.name} v{config.version}: {report.headline} (threshold {report.threshold})")
    for name in config.classes:
        print(f"  {name:16s} AP {report.ap[name]:.4f}   F1 {report.f1[name]:.4f}")
    if args.out:
        out = write_metrics(args, {"model": config.name, "version": config.version, **report.to_json()})
        print(f"wrote {out / 'metrics.json'}")
    return 0


def run_captioning(args: argparse.Namespace) -> int:
    from models.caption_data import load_captions
    from models.preprocessing import read_image
    from models.text import Vocabulary
    from models.train.captioning import CaptionDataset, decode_dataset, score_captions
    from models.visualize import caption_sheet

    images, captions_file = data_paths(args, CAPTIONS, "test")
    model, config, device = load_model(args, "captioning", "a captioner")
    vocab = Vocabulary.from_json(config.extra["vocab"])
    max_length = args.max_length or int(config.extra.get("max_length", 20))
    references = load_captions(captions_file)
    dataset = CaptionDataset(images, references, vocab, size=config.input_size, max_length=max_length)
    report: dict = {
        "model": config.name,
        "version": config.version,
        "images": len(dataset),
        "metric_implementation": "models.caption_metrics (pure Python: corpus BLEU, CIDEr-D)",
        "by_beam_size": {},
    }
    decoded = {}
    for k in args.beam_sizes:
        decoded[k] = decode_dataset(model, dataset, vocab, device=device, beam_size=k, max_length=max_length)
        report["by_beam_size"][str(k)] = metrics = score_captions(decoded[k], references)
        print(f"beam {k:2d}: " + "  ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    if args.out:
        out = write_metrics(args, report)
        best_k = args.beam_sizes[-1]
        (out / "captions.json").write_text(
            json.dumps(
                [{"image": n, "caption": decoded[best_k][n], "references": references[n]} for n in dataset.names],
                indent=2,
            )
            + "\n"
        )
        rows = [(read_image(Path(images) / n), decoded[best_k][n], references[n][0]) for n in dataset.names[:12]]
        sheet = caption_sheet(rows, out / "examples.png", title=f"{config.name} (beam {best_k})")
        print(f"wrote {out / 'metrics.json'}, {out / 'captions.json'} and {sheet}")
    else:
        print(json.dumps(report, indent=2))
    return 0


def run_generation(args: argparse.Namespace) -> int:
    from models.gen_metrics import evaluate_generator
    from models.generation import image_grid, to_uint8
    from models.preprocessing import encode_image

    generator, config, _ = load_model(args, "generation", "a generator", device="cpu")  # (the metric runs on CPU)
    scores, drawn = evaluate_generator(
        generator,
        dict(config.model_args),
        args.data,
        train_split=args.train_split,
        test_split=args.test_split,
        count=args.samples,
        seed=args.seed,
        confidence=args.confidence,
        classifier_epochs=args.classifier_epochs,
    )
    report = {"model": config.name, "version": config.version, **scores}
    print(
        f"feature classifier: {scores['feature_classifier']['train_images']} real training images, test accuracy "
        f"{scores['feature_classifier']['test_accuracy']:.3f}"
    )
    for key in drawn:
        print(
            f"{key:20s} Fréchet distance {scores[key]['frechet_distance']:9.3f}   recognised "
            f"{scores[key]['recognised_share']:.3f}"
        )
    print(f"Fréchet distance / baseline: {report['frechet_ratio_to_baseline']:.3f}")
    if args.out:
        out = write_metrics(args, report)
        for key, images in drawn.items():
            grid = image_grid(to_uint8(images[:64]))
            (out / f"{key.replace(' ', '_')}_samples.png").write_bytes(encode_image(grid, "png"))
        print(f"wrote {out / 'metrics.json'} and the sample grids")
    return 0
