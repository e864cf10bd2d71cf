"""The seeded synthetic "shapes" dataset: one generator for every task and every test.

Coloured circles, squares and triangles on varied backgrounds (solid, gradient, noise or stripes;
``solid_backgrounds=True`` keeps only the solid ones). For each split it writes

    images/<split>/<id>.png          RGB images
    masks/<split>/<id>.png           uint8 label maps (0 background, k = CLASSES index + 1)
    annotations/<split>.json         COCO detection JSON (bbox [x, y, w, h] in pixels)
    captions/<split>.json            COCO captions JSON (template captions, left to right)
    classes.txt, dataset.json        class names; a summary

The same seed gives byte-identical files. ``generate_classification`` writes the classification
variant: one shape per image, in the ImageFolder layout ``images/<split>/<kind>/<id>.png``, in
one of two visibly different domains of the same classes (``DOMAINS``), optionally with each
shape's mask (Grad-CAM's test) or as a multi-label CSV of several shapes per image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
}
DEFAULT_SPLITS: Mapping[str, int] = {"train": 600, "val": 100, "test": 100}


@dataclass(frozen=True)
class Shape:
    """One drawn shape: class, colour name, and its box (x1, y1, x2, y2) in pixels, exclusive ends."""

    kind: str
    color: str
    box: tuple[int, int, int, int]


def _background(rng: np.random.Generator, size: int, *, solid: bool = False) -> np.ndarray:
    """A dark-to-mid background (solid, gradient, noise or stripes; only solid when ``solid``),
    RGB uint8 (size, size, 3)."""
    base = rng.integers(20, 110, size=3)
    style = 0 if solid else int(rng.integers(0, 4))
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    if style == 1:  # gradient
        ramp = (
            np.linspace(0, 1, size, dtype=np.float32)[:, None]
            if rng.random() < 0.5
            else np.linspace(0, 1, size, dtype=np.float32)[None, :]
        )
        img += ramp[..., None] * rng.integers(-40, 40, size=3)
    elif style == 2:  # noise
        img += rng.normal(0, 12, size=(size, size, 3))
    elif style == 3:  # stripes
        period = int(rng.integers(8, 24))
        stripes = ((np.arange(size) // period) % 2).astype(np.float32)
        img += (stripes[:, None] if rng.random() < 0.5 else stripes[None, :])[..., None] * 25
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, mask: np.ndarray, shape: Shape) -> None:
    x1, y1, x2, y2 = shape.box
    color = COLORS[shape.color]
    label = CLASSES.index(shape.kind) + 1
    if shape.kind == "circle":
        center = ((x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2)
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        inside = (xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= ((x2 - x1) / 2) ** 2
    elif shape.kind == "square":
        inside = np.zeros(mask.shape, bool)
        inside[y1:y2, x1:x2] = True
    else:  # triangle, apex up
        layer = np.zeros(mask.shape, np.uint8)
        pts = np.array([[(x1 + x2 - 1) // 2, y1], [x1, y2 - 1], [x2 - 1, y2 - 1]], np.int32)
        cv2.fillPoly(layer, [pts], 1)
        inside = layer.astype(bool)
    img[inside] = color
    mask[inside] = label


def _tight_box(mask: np.ndarray, label: int) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask == label)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


SIDES = (0.11, 0.375)  # a shape's side as a share of the image's: 14..48 px at 128
MULTI_LABEL_SIDES = (0.25, 0.45)  # the multi-label variant's larger shapes: 16..29 px at 64


def _place(
    rng: np.random.Generator, size: int, taken: list[tuple[int, int, int, int]], sides: tuple[float, float] = SIDES
) -> tuple[int, int, int, int] | None:
    """A square box of side ``sides`` x size (at least 10..12 px) not overlapping earlier boxes (2 px margin)."""
    lo, hi = max(10, round(size * sides[0])), max(12, round(size * sides[1]))
    for _ in range(50):
        side = int(rng.integers(lo, hi + 1))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = (x, y, x + side, y + side)
        if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1] or t[3] + 2 <= box[1] for t in taken):
            return box
    return None


def caption(shapes: list[Shape]) -> str:
    """A sentence naming the shapes left to right: "a red circle", "a red circle to the left of a
    blue square", "a red circle, a blue square and a green triangle"."""
    ordered = [f"a {s.color} {s.kind}" for s in sorted(shapes, key=lambda s: (s.box[0] + s.box[2], s.box[1]))]
    if len(ordered) == 1:
        return ordered[0]
    if len(ordered) == 2:
        return f"{ordered[0]} to the left of {ordered[1]}"
    return ", ".join(ordered[:-1]) + f" and {ordered[-1]}"


def render(
    rng: np.random.Generator,
    *,
    size: int,
    max_shapes: int,
    solid_backgrounds: bool = False,
    sides: tuple[float, float] = SIDES,
) -> tuple[np.ndarray, np.ndarray, list[Shape]]:
    """One image (RGB uint8), its label map, and its shapes with tight boxes."""
    img = _background(rng, size, solid=solid_backgrounds)
    mask = np.zeros((size, size), np.uint8)
    taken: list[tuple[int, int, int, int]] = []
    shapes: list[Shape] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        box = _place(rng, size, taken, sides)
        if box is None:
            break
        kind = CLASSES[int(rng.integers(len(CLASSES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        taken.append(box)
        _draw(img, mask, Shape(kind, color, box))
        shapes.append(Shape(kind, color, box))
    # Boxes are re-measured from the drawn pixels (a triangle's corners round inward).
    tight = []
    for s in shapes:
        region = np.zeros_like(mask)
        x1, y1, x2, y2 = s.box
        region[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
        box = _tight_box(region, CLASSES.index(s.kind) + 1)
        if box is not None:
            tight.append(Shape(s.kind, s.color, box))
    return img, mask, tight


def _categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]


def _write_split(
    out: Path,
    split: str,
    count: int,
    *,
    size: int,
    max_shapes: int,
    solid_backgrounds: bool,
    rng: np.random.Generator,
    progress: bool,
) -> dict[str, int]:
    for sub in ("images", "masks"):
        (out / sub / split).mkdir(parents=True, exist_ok=True)
    images, annotations, captions = [], [], []
    for i in tqdm(range(1, count + 1), desc=f"synth {split}", disable=None if progress else True, leave=False):
        img, mask, shapes = render(rng, size=size, max_shapes=max_shapes, solid_backgrounds=solid_backgrounds)
        name = f"{i:06d}.png"
        cv2.imwrite(str(out / "images" / split / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "masks" / split / name), mask)
        images.append({"id": i, "file_name": name, "width": size, "height": size})
        for s in shapes:
            x1, y1, x2, y2 = s.box
            region = mask[y1:y2, x1:x2] == CLASSES.index(s.kind) + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": CLASSES.index(s.kind) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": int(region.sum()),
                    "iscrowd": 0,
                    "attributes": {"color": s.color},
                }
            )
        text = caption(shapes)
        captions.append({"id": len(captions) + 1, "image_id": i, "caption": text})
        if len(shapes) >= 2:  # a second phrasing: right to left
            right_first = sorted(shapes, key=lambda s: -(s.box[0] + s.box[2]))
            if len(shapes) == 2:
                first, second = right_first
                alt = f"a {first.color} {first.kind} to the right of a {second.color} {second.kind}"
                captions.append({"id": len(captions) + 1, "image_id": i, "caption": alt})
    (out / "annotations").mkdir(exist_ok=True)
    (out / "captions").mkdir(exist_ok=True)
    info = {"description": f"cvtasks synthetic shapes, split {split}"}
    (out / "annotations" / f"{split}.json").write_text(
        json.dumps({"info": info, "images": images, "annotations": annotations, "categories": _categories()})
    )
    (out / "captions" / f"{split}.json").write_text(
        json.dumps({"info": info, "images": images, "annotations": captions})
    )
    return {"images": len(images), "boxes": len(annotations), "captions": len(captions)}


def generate_shapes(
    out_dir: str | Path,
    *,
    splits: Mapping[str, int] = DEFAULT_SPLITS,
    image_size: int = 128,
    max_shapes: int = 3,
    solid_backgrounds: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the dataset (layout in the module docstring); returns a summary per split."""
    if image_size < 32 or max_shapes < 1:
        raise ValueError(f"image_size must be >= 32 and max_shapes >= 1, got {image_size}, {max_shapes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "root": str(out),
        "image_size": image_size,
        "max_shapes": max_shapes,
        "solid_backgrounds": solid_backgrounds,
        "seed": seed,
        "classes": list(CLASSES),
    }
    for index, (split, count) in enumerate(splits.items()):
        # One stream per split (seeded by seed and split order) so splits never share images.
        rng = np.random.default_rng([seed, index])
        summary[split] = _write_split(
            out,
            split,
            count,
            size=image_size,
            max_shapes=max_shapes,
            solid_backgrounds=solid_backgrounds,
            rng=rng,
            progress=progress,
        )
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- classification

#: The classification variant's domains: "source" draws large shapes on the dark backgrounds
#: above; "target" draws smaller, darker shapes on bright checkerboard or dotted textures.
DOMAINS = ("source", "target")


def _bright_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A light background with a checkerboard or a dot texture, RGB uint8 (size, size, 3)."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.integers(150, 230, size=3)
    period = int(rng.integers(4, 12))
    yy, xx = np.mgrid[0:size, 0:size]
    if rng.random() < 0.5:
        pattern = ((yy // period + xx // period) % 2).astype(np.float32)
    else:
        pattern = (((yy % period) - period / 2) ** 2 + ((xx % period) - period / 2) ** 2 < (period / 3) ** 2).astype(
            np.float32
        )
    img -= pattern[..., None] * rng.integers(20, 50, size=3)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_single(
    rng: np.random.Generator, *, size: int, domain: str = "source"
) -> tuple[np.ndarray, Shape, np.ndarray]:
    """One image (RGB uint8 (size, size, 3)) holding one shape, that shape, and its mask (bool (size, size))."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    source = domain == "source"
    img = _background(rng, size) if source else _bright_texture(rng, size)
    low, high = (0.35, 0.75) if source else (0.2, 0.45)
    side = int(rng.integers(round(size * low), round(size * high) + 1))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    kind = CLASSES[int(rng.integers(len(CLASSES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = Shape(kind, color, (x, y, x + side, y + side))
    drawn, mask = img.copy(), np.zeros((size, size), np.uint8)
    _draw(drawn, mask, shape)
    if not source:  # darker shapes: the same colours at 60 %
        changed = np.any(drawn != img, axis=2)
        drawn[changed] = (drawn[changed].astype(np.float32) * 0.6).astype(np.uint8)
    return drawn, shape, mask > 0


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


def generate_classification(
    out_dir: str | Path,
    *,
    splits: Mapping[str, int] = DEFAULT_SPLITS,
    image_size: int = 128,
    domain: str = "source",
    seed: int = 0,
    masks: bool = False,
    multi_label: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``images/<split>/<kind>/<id>.png`` (one shape per image, labelled by its kind),
    classes.txt and dataset.json; returns a summary with the images per class of each split.

    ``masks``: also ``masks/<split>/<kind>/<id>.png`` (255 on the shape, 0 elsewhere).
    ``multi_label``: instead 1..3 shapes per image (the shapes generator's, larger: a side of
    ``MULTI_LABEL_SIDES`` of the image's; source domain only):
    ``images/<split>/<id>.png`` and ``labels/<split>.csv`` with columns ``image,label``, the
    label the kinds present joined by ``|`` (e.g. ``circle|square``); the summary counts images
    per class (an image counts for each kind it shows)."""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if multi_label and domain != "source":
        raise ValueError("the multi-label variant draws the source domain only")
    out = Path(out_dir)
    summary: dict[str, Any] = {"root": str(out), "image_size": image_size, "domain": domain, "seed": seed}
    if multi_label:
        summary["multi_label"] = True
    for index, (split, count) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, index, DOMAINS.index(domain) if domain in DOMAINS else 0])
        for kind in () if multi_label else CLASSES:
            (out / "images" / split / kind).mkdir(parents=True, exist_ok=True)
        counts, rows = dict.fromkeys(CLASSES, 0), []
        for i in tqdm(range(1, count + 1), desc=f"synth {split}", disable=None if progress else True, leave=False):
            if multi_label:
                img, label_map, shapes = render(rng, size=image_size, max_shapes=3, sides=MULTI_LABEL_SIDES)
                kinds = sorted({s.kind for s in shapes}, key=CLASSES.index)
                name, mask = f"{i:06d}.png", (label_map > 0).astype(np.uint8) * 255
                rows.append(f"{name},{'|'.join(kinds)}")
            else:
                img, shape, inside = render_single(rng, size=image_size, domain=domain)
                kinds, name, mask = [shape.kind], f"{shape.kind}/{i:06d}.png", inside.astype(np.uint8) * 255
            _write_png(out / "images" / split / name, img)
            if masks:
                _write_png(out / "masks" / split / name, mask)
            for kind in kinds:
                counts[kind] += 1
        if multi_label:
            (out / "labels").mkdir(exist_ok=True)
            (out / "labels" / f"{split}.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
        summary[split] = counts
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "dataset.json").write_text(json.dumps({**summary, "classes": list(CLASSES)}, indent=2) + "\n")
    return summary
