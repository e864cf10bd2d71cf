"""``cvtasks caption IMAGE... --server HOST:PORT``: captions over gRPC, printed and saved as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, BMP, TIFF)")
    p.add_argument("--server", default="localhost:50051", help="HOST:PORT of `cvtasks serve --task captioning`")
    p.add_argument("--model", default="", help="model name (default: the server's default captioning model)")
    p.add_argument("--beam-size", type=int, default=None, help="1 = greedy (server default 3)")
    p.add_argument("--max-length", type=int, default=None, help="most words per caption (default: the model's)")
    p.add_argument("--num-captions", type=int, default=None, help="return the N best captions (<= beam size)")
    p.add_argument("--length-penalty", type=float, default=None, help="0..2 (default 1: mean log-prob per word)")
    p.add_argument("--output", default=None, help="write the JSON results to this file too")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole stream")
    p.set_defaults(run=run)


def response_to_json(path: str, response: Any) -> dict[str, Any]:
    if response.HasField("error"):
        return {"image": path, "error": {"code": response.error.code, "message": response.error.message}}
    return {
        "image": path, "model": {"name": response.model.name, "version": response.model.version},
        "captions": [{"text": c.text, "log_prob": round(c.log_prob, 4), "score": round(c.score, 4)}
                     for c in response.captions],
        "timings_ms": {"total": round(response.timings.total_ms, 2), "inference": round(response.timings.inference_ms, 2)},
    }


def run(args: argparse.Namespace) -> int:
    from services.client import CvtasksClient

    paths = [str(p) for p in args.images]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file(s): {', '.join(missing)}")
    rows, failed = [], 0
    with CvtasksClient.from_env(args.server) as client:
        responses = client.caption_stream(
            (Path(p).read_bytes() for p in paths), timeout=args.timeout, model=args.model,
            beam_size=args.beam_size, max_length=args.max_length, num_captions=args.num_captions,
            length_penalty=args.length_penalty)
        for path, response in zip(paths, responses):
            row = response_to_json(path, response)
            rows.append(row)
            if "error" in row:
                failed += 1
                print(f"{path}: error: {response.error.message}", file=sys.stderr)
            else:
                print(f"{path}: {row['captions'][0]['text']}", file=sys.stderr)
    text = json.dumps(rows, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 1 if failed else 0
