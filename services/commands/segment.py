"""``cvtasks segment IMAGE... --server HOST:PORT``: label maps and overlays over gRPC."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.options import SegmentOptions
from services.commands.client_run import add_client_arguments, image_row, run_files
from services.commands.flags import add_option_flags, options_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_client_arguments(p, "segmentation", timeout=60.0)
    p.add_argument("--out", default="segmented", help="folder for <stem>_mask.png and <stem>_overlay.png")
    p.add_argument("--no-overlay", action="store_true", help="no overlay image (on by default here)")
    add_option_flags(p, SegmentOptions, skip={"include_overlay"})
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any, mask: Path | None, overlay: Path | None) -> dict[str, Any]:
    from services.client import processing_name

    row: dict[str, Any] = {
        **image_row(path, response),
        "processing": processing_name(response.processing),
        "processing_detail": response.processing_detail,
        "areas": {
            a.class_name: {"pixels": a.pixel_count, "fraction": round(a.area_fraction, 5)} for a in response.areas
        },
        "mask": str(mask) if mask else None,
        "overlay": str(overlay) if overlay else None,
    }
    if response.contours:
        row["contours"] = {
            c.class_name: [[[p.x, p.y] for p in poly.points] for poly in c.polygons] for c in response.contours
        }
    return row


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def row(path: str, response: Any) -> dict[str, Any]:
        mask, overlay = out / f"{Path(path).stem}_mask.png", None
        mask.write_bytes(response.label_map_png)
        if response.overlay_png:
            overlay = out / f"{Path(path).stem}_overlay.png"
            overlay.write_bytes(response.overlay_png)
        return response_to_json(path, response, mask, overlay)

    options = {**options_from_args(args, SegmentOptions), "include_overlay": not args.no_overlay}
    rows, failed = run_files(args, "segment_stream", options, row)
    (out / "segments.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return 1 if failed else 0
