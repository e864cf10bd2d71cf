"""``cvtasks segment IMAGE... --server HOST:PORT``: label maps and overlays over gRPC."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+")
    p.add_argument("--server", default="localhost:50051")
    p.add_argument("--model", default="")
    p.add_argument("--out", default="segmented", help="folder for <stem>_mask.png and <stem>_overlay.png")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--contours", action="store_true", help="include class outline polygons in the JSON")
    p.add_argument("--large-image-mode", choices=("resize", "tile"), default="resize")
    p.add_argument("--max-side", type=int, default=None, help="longest side in one pass (default 1024)")
    p.add_argument("--tile-overlap", type=int, default=None)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any, mask: Path | None, overlay: Path | None) -> dict[str, Any]:
    from services.client import processing_name

    if response.HasField("error"):
        return {"image": path, "error": {"code": response.error.code, "message": response.error.message}}
    row: dict[str, Any] = {
        "image": path, "model": {"name": response.model.name, "version": response.model.version},
        "width": response.image_width, "height": response.image_height,
        "processing": processing_name(response.processing), "processing_detail": response.processing_detail,
        "areas": {a.class_name: {"pixels": a.pixel_count, "fraction": round(a.area_fraction, 5)}
                  for a in response.areas},
        "mask": str(mask) if mask else None, "overlay": str(overlay) if overlay else None,
    }
    if response.contours:
        row["contours"] = {c.class_name: [[[p.x, p.y] for p in poly.points] for poly in c.polygons]
                           for c in response.contours}
    return row


def run(args: argparse.Namespace) -> int:
    from services.client import CvtasksClient

    paths = [str(p) for p in args.images]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file(s): {', '.join(missing)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    with CvtasksClient.from_env(args.server, timeout=args.timeout) as client:
        responses = client.segment_stream(
            (Path(p).read_bytes() for p in paths), model=args.model, overlay=not args.no_overlay,
            contours=args.contours, large_image_mode=args.large_image_mode, max_side=args.max_side,
            tile_overlap=args.tile_overlap,
        )
        for path, response in zip(paths, responses):
            mask = overlay = None
            if response.HasField("error"):
                failed += 1
                print(f"{path}: {response.error.message}", file=sys.stderr)
            else:
                mask = out / f"{Path(path).stem}_mask.png"
                mask.write_bytes(response.label_map_png)
                if response.overlay_png:
                    overlay = out / f"{Path(path).stem}_overlay.png"
                    overlay.write_bytes(response.overlay_png)
            rows.append(response_to_json(path, response, mask, overlay))
    (out / "segments.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return 1 if failed else 0
