"""Evaluation metrics. Detection: pycocotools COCOeval (AP@[.5:.95], AP50, AP75).
Segmentation: smp.metrics per-class IoU and Dice, mIoU, pixel accuracy, confusion matrix.
Classification: top-1 / top-5 accuracy, per-class precision, recall and F1, confusion matrix,
expected calibration error (models/class_metrics.py); multi-label: per-class average precision
(and their mean, mAP), F1 at a threshold, subset accuracy."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from models.class_metrics import ECE_BINS, Reliability, reliability


def coco_from_dict(dataset: Mapping[str, Any]) -> COCO:
    """A pycocotools COCO index over an in-memory COCO JSON dict (no prints)."""
    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_detection_metrics(gt: COCO, results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCOeval bbox metrics for ``results`` (COCO results format: image_id, category_id, bbox xywh, score).

    Returns ``{"AP": AP@[.5:.95], "AP50": ..., "AP75": ...}``; all 0.0 when there are no results.
    """
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    ev = _coco_eval(gt, results)
    # A metric with no ground truth at all is -1 in COCOeval; report 0 instead.
    return {k: max(0.0, float(ev.stats[i])) for k, i in (("AP", 0), ("AP50", 1), ("AP75", 2))}


def coco_class_metrics(gt: COCO, results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """AP@[.5:.95] and AP50 of each category, by its name in ``gt`` (areas all, up to 100
    detections an image, as the totals): the mean of COCOeval's interpolated precision over
    recall (and IoU thresholds, for AP). A category without detections scores 0."""
    names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    if not results:
        return {name: {"AP": 0.0, "AP50": 0.0} for name in names.values()}
    ev = _coco_eval(gt, results)
    precision = ev.eval["precision"]  # (IoU thresholds, recall points, categories, areas, max detections)
    scores = {}
    for k, category in enumerate(ev.params.catIds):
        per_iou = precision[:, :, k, 0, -1]  # -1 where a category has no ground truth
        valid, at_50 = per_iou[per_iou > -1], per_iou[0][per_iou[0] > -1]
        scores[names[category]] = {
            "AP": float(valid.mean()) if valid.size else 0.0,
            "AP50": float(at_50.mean()) if at_50.size else 0.0,
        }
    return scores


def _coco_eval(gt: COCO, results: Sequence[Mapping[str, Any]]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(list(results))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = sorted(gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def detection_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_category: Mapping[int, int],
) -> list[dict[str, Any]]:
    """torchvision outputs (boxes xyxy) -> COCO results rows (bbox xywh, category ids)."""
    rows = []
    for out, image_id in zip(outputs, image_ids):
        for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            x1, y1, x2, y2 = box
            rows.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_category[int(label)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return rows


def evaluate_detector(
    model: nn.Module,
    dataset: Dataset,
    *,
    gt: COCO,
    label_to_category: Mapping[int, int],
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    per_class: bool = False,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` (items: image tensor, target with "image_id") and COCO-evaluate
    it: AP, AP50, AP75, and with ``per_class`` also ``per_class`` (class name -> AP, AP50)."""
    from models.datasets import collate_detection

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc="eval", leave=False, disable=None if progress else True):
            outputs = model([im.to(device) for im in images])
            outputs = [{k: v.cpu() for k, v in o.items()} for o in outputs]
            rows += detection_results(outputs, [int(t["image_id"]) for t in targets], label_to_category)
    model.train(was_training)
    metrics: dict[str, Any] = coco_detection_metrics(gt, rows)
    return {**metrics, "per_class": coco_class_metrics(gt, rows)} if per_class else metrics


# --------------------------------------------------------------------------- segmentation


@dataclass
class SegmentationReport:
    """Dataset-level segmentation metrics. ``confusion[i, j]``: pixels of true class i predicted j."""

    class_names: tuple[str, ...]
    iou: dict[str, float]  # per class (smp.metrics.iou_score over summed stats)
    dice: dict[str, float]  # per class (smp.metrics.f1_score == Dice)
    miou: float  # mean IoU over classes that occur in the ground truth or the predictions
    pixel_accuracy: float
    confusion: np.ndarray  # (K, K) int64

    def to_json(self) -> dict[str, Any]:
        return {
            "mIoU": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "iou": self.iou,
            "dice": self.dice,
            "classes": list(self.class_names),
            "confusion": self.confusion.tolist(),
        }

    @property
    def headline(self) -> str:
        return f"mIoU {self.miou:.3f}, pixel accuracy {self.pixel_accuracy:.3f}"

    def confusion_text(self) -> str:
        return confusion_text(self.confusion, self.class_names)


def confusion_text(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    """A confusion matrix (rows: true class, columns: predicted) as aligned text."""
    width = max(8, *(len(n) for n in class_names)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(n[: width - 1].rjust(width) for n in class_names)]
    for name, row in zip(class_names, confusion):
        lines.append(name.ljust(width) + "".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)


def segmentation_report(
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    confusion: np.ndarray,
    class_names: Sequence[str],
) -> SegmentationReport:
    """Per-class IoU / Dice from summed (tp, fp, fn, tn) of shape (1, K), plus the confusion matrix."""
    tp, fp, fn, tn = stats
    iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none", zero_division=0.0)[0]
    dice = smp.metrics.f1_score(tp, fp, fn, tn, reduction="none", zero_division=0.0)[0]
    present = (tp + fp + fn)[0] > 0
    miou = float(iou[present].mean()) if present.any() else 0.0
    total = confusion.sum()
    return SegmentationReport(
        class_names=tuple(class_names),
        iou={n: float(v) for n, v in zip(class_names, iou)},
        dice={n: float(v) for n, v in zip(class_names, dice)},
        miou=miou,
        pixel_accuracy=float(np.trace(confusion) / total) if total else 0.0,
        confusion=confusion,
    )


class SegmentationAccumulator:
    """Sums smp.metrics stats and the confusion matrix over (prediction, target) label maps."""

    def __init__(self, class_names: Sequence[str], *, ignore_index: int = 255) -> None:
        self.class_names, self.ignore_index = tuple(class_names), ignore_index
        k = len(self.class_names)
        self.sums = [torch.zeros(1, k, dtype=torch.long) for _ in range(4)]
        self.confusion = np.zeros((k, k), np.int64)

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` and ``target``: int64 (H, W) or (B, H, W) class ids (target may hold ignore_index)."""
        k = len(self.class_names)
        pred, target = pred.reshape(-1, *pred.shape[-2:]).long(), target.reshape(-1, *target.shape[-2:]).long()
        stats = smp.metrics.get_stats(pred, target, mode="multiclass", num_classes=k, ignore_index=self.ignore_index)
        for total, part in zip(self.sums, stats):
            total += part.sum(0, keepdim=True)
        keep = target != self.ignore_index
        self.confusion += np.bincount((target[keep] * k + pred[keep]).numpy(), minlength=k * k).reshape(k, k)

    def report(self) -> SegmentationReport:
        return segmentation_report(tuple(self.sums), self.confusion, self.class_names)


def evaluate_segmenter(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
    progress: bool = True,
) -> SegmentationReport:
    """Predict every (image, mask) of ``dataset`` one image at a time (sizes may differ)."""
    from models.segmentation import forward_any_size, logits_to_labels, normalize_batch

    totals = SegmentationAccumulator(dataset.class_names, ignore_index=ignore_index)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=1, shuffle=False)
    with torch.inference_mode():
        for image, mask in tqdm(loader, desc="eval", leave=False, disable=None if progress else True):
            batch = normalize_batch([image[0].to(device)], mean=mean, std=std)
            totals.add(logits_to_labels(forward_any_size(model, batch)).cpu(), mask)
    model.train(was_training)
    return totals.report()


@dataclass
class ClassificationReport:
    """Dataset-level classification metrics. ``confusion[i, j]``: images of class i predicted j;
    ``top5`` counts a hit among the min(5, classes) most probable."""

    class_names: tuple[str, ...]
    top1: float
    top5: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    confusion: np.ndarray  # (K, K) int64
    # per image, in the dataset's order: true id, predicted id, the predicted class's probability (N,)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    predicted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    @classmethod
    def of(
        cls,
        confusion: np.ndarray,
        top5_hits: int,
        class_names: Sequence[str],
        *,
        labels: np.ndarray | None = None,
        predicted: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
    ) -> ClassificationReport:
        """The report of a confusion matrix (K, K) and the number of top-5 hits, with the per-image
        predictions when given (calibration and the worst mistakes need them)."""
        total, hits = max(1, int(confusion.sum())), np.diag(confusion).astype(np.float64)
        precision = hits / np.maximum(1, confusion.sum(0))
        recall = hits / np.maximum(1, confusion.sum(1))
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(1e-12, precision + recall), 0.0)
        names = tuple(class_names)
        return cls(
            class_names=names,
            top1=float(hits.sum() / total),
            top5=float(top5_hits / total),
            precision={n: float(v) for n, v in zip(names, precision)},
            recall={n: float(v) for n, v in zip(names, recall)},
            f1={n: float(v) for n, v in zip(names, f1)},
            confusion=confusion,
            **{
                k: np.asarray(v)
                for k, v in (("labels", labels), ("predicted", predicted), ("confidence", confidence))
                if v is not None
            },
        )

    def reliability(self) -> Reliability:
        """The confidence bins (ECE_BINS equal-width) of the per-image predictions."""
        return reliability(self.confidence, self.labels == self.predicted)

    @property
    def ece(self) -> float:
        """Expected calibration error over ECE_BINS equal-width confidence bins."""
        return self.reliability().ece

    @property
    def headline(self) -> str:
        return f"top-1 {self.top1:.3f}, top-5 {self.top5:.3f}"

    def confusion_text(self) -> str:
        return confusion_text(self.confusion, self.class_names)

    def to_json(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "images": int(self.confusion.sum()),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "classes": list(self.class_names),
            "confusion": self.confusion.tolist(),
            "ece": self.ece,
            "ece_bins": ECE_BINS,
            "reliability": self.reliability().to_json(),
        }


def evaluate_classifier(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    progress: bool = True,
) -> ClassificationReport:
    """Classify every (input, class id) of ``dataset`` (inputs as classifier_input makes them)."""
    names = dataset.class_names
    k = len(names)
    confusion, top5_hits = np.zeros((k, k), np.int64), 0
    seen: dict[str, list[torch.Tensor]] = {"labels": [], "predicted": [], "confidence": []}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for images, labels in tqdm(loader, desc="eval", leave=False, disable=None if progress else True):
            logits = model(images.to(device)).float().cpu()
            top = logits.topk(min(5, k), dim=1).indices
            top5_hits += int((top == labels[:, None]).any(1).sum())
            confusion += np.bincount((labels * k + top[:, 0]).numpy(), minlength=k * k).reshape(k, k)
            seen["labels"].append(labels)
            seen["predicted"].append(top[:, 0])
            seen["confidence"].append(logits.softmax(dim=1).max(dim=1).values.double())
    model.train(was_training)
    per_image = {key: torch.cat(parts).numpy() if parts else None for key, parts in seen.items()}
    return ClassificationReport.of(confusion, top5_hits, names, **per_image)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP of one class: the mean of the precision at each positive, ranked by descending score
    (ties in input order); NaN when ``truth`` (bool (N,)) has no positive."""
    positives = int(truth.sum())
    if positives == 0:
        return float("nan")
    hits = truth[np.argsort(-scores, kind="stable")].astype(np.float64)
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / positives)


@dataclass
class MultiLabelReport:
    """Multi-label metrics: per class AP and F1 (a label is predicted when its sigmoid >=
    ``threshold``); ``mean_ap`` over the classes with a positive; ``subset_accuracy``: images
    whose predicted label set is exactly right."""

    class_names: tuple[str, ...]
    ap: dict[str, float]
    f1: dict[str, float]
    mean_ap: float
    macro_f1: float
    subset_accuracy: float
    threshold: float

    @classmethod
    def of(cls, probs: np.ndarray, truth: np.ndarray, class_names: Sequence[str], threshold: float) -> MultiLabelReport:
        """From sigmoid probabilities and multi-hot truth, both (N, C)."""
        names, predicted, truth = tuple(class_names), probs >= threshold, truth > 0.5
        ap = [average_precision(probs[:, c], truth[:, c]) for c in range(len(names))]
        tp, fp, fn = ((predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0))
        f1 = 2 * tp / np.maximum(1, 2 * tp + fp + fn)
        return cls(
            class_names=names,
            ap={n: v for n, v in zip(names, ap)},
            f1={n: float(v) for n, v in zip(names, f1)},
            mean_ap=float(np.nanmean(ap)) if not np.isnan(ap).all() else 0.0,
            macro_f1=float(f1.mean()),
            subset_accuracy=float((predicted == truth).all(1).mean()) if len(truth) else 0.0,
            threshold=threshold,
        )

    @property
    def headline(self) -> str:
        return f"mAP {self.mean_ap:.3f}, macro F1 {self.macro_f1:.3f}, subset accuracy {self.subset_accuracy:.3f}"

    def to_json(self) -> dict[str, Any]:
        return {
            "mAP": self.mean_ap,
            "macro_f1": self.macro_f1,
            "subset_accuracy": self.subset_accuracy,
            "threshold": self.threshold,
            "ap": {n: None if np.isnan(v) else v for n, v in self.ap.items()},  # None: no positive
            "f1": self.f1,
            "classes": list(self.class_names),
        }


def evaluate_multi_label(
    model: nn.Module,
    dataset: Dataset,
    *,
    threshold: float = 0.5,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    progress: bool = True,
) -> MultiLabelReport:
    """Score every (input, multi-hot target) of ``dataset`` with a sigmoid per class."""
    was_training, probs, truth = model.training, [], []
    model.eval()
    with torch.inference_mode():
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for images, targets in tqdm(loader, desc="eval", leave=False, disable=None if progress else True):
            probs.append(model(images.to(device)).float().sigmoid().cpu().numpy())
            truth.append(targets.numpy())
    model.train(was_training)
    k = len(dataset.class_names)
    stacked = [np.concatenate(x) if x else np.zeros((0, k)) for x in (probs, truth)]
    return MultiLabelReport.of(*stacked, dataset.class_names, threshold)


def plot_confusion(report: SegmentationReport | ClassificationReport, path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix as a PNG heat map with counts, the report's headline on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.confusion / np.maximum(1, report.confusion.sum(1, keepdims=True))
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 1.2 * len(rows) + 1.5))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    names = report.class_names
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{rows[i, j]:.2f}\n{report.confusion[i, j]}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rows[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(report.headline)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
