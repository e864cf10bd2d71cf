"""``cvtasks generate --count N --seed S --server HOST:PORT --out DIR``: images and a grid over gRPC."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="localhost:50051", help="HOST:PORT of `cvtasks serve --task generation`")
    p.add_argument("--model", default="", help="model name (default: the server's default generator)")
    p.add_argument("--count", type=int, default=16, help="images to draw (1..64)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    p.add_argument(
        "--interpolate",
        type=int,
        nargs=2,
        metavar=("START_SEED", "END_SEED"),
        default=None,
        help="instead: a path between two seeds' first latents (--steps images)",
    )
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--linear", action="store_true", help="linear instead of spherical interpolation")
    p.add_argument("--out", default="generated", help="folder for <seed>_<i>.png and grid.png")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from models.generation import image_grid
    from models.preprocessing import decode_image, encode_image
    from services.client import CvtasksClient

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with CvtasksClient.from_env(args.server, timeout=args.timeout) as client:
        if args.interpolate:
            start, end = args.interpolate
            response = client.interpolate(
                start, end, steps=args.steps, path="linear" if args.linear else "spherical", model=args.model
            )
            stem = f"path_{start}_{end}"
        else:
            response = client.generate(count=args.count, seed=args.seed, model=args.model)
            stem = f"seed{args.seed}"
    paths = []
    for i, image in enumerate(response.images):
        path = out / f"{stem}_{i:03d}.png"
        path.write_bytes(image.png)
        paths.append(str(path))
    pixels = np.stack([decode_image(image.png) for image in response.images])
    columns = len(pixels) if args.interpolate else None
    grid = out / f"{stem}_grid.png"
    grid.write_bytes(encode_image(image_grid(pixels, columns=columns), "png"))
    print(
        json.dumps(
            {
                "model": {"name": response.model.name, "version": response.model.version},
                "images": paths,
                "grid": str(grid),
            },
            indent=2,
        )
    )
    print(f"wrote {len(paths)} images and {grid}", file=sys.stderr)
    return 0
