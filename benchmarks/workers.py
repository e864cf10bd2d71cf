"""One model served by 1 and by N worker processes (``cvtasks serve --workers N``), side by side.

    python benchmarks/workers.py [TASK] [--workers N] [--threads T] [--rounds R] [--images N]
                                 [--model-store DIR --model NAME]

TASK: detection (default), segmentation, captioning or classification. Each server is the real
command in a subprocess (the supervisor and its workers), every model on ``--threads`` torch
threads (OMP_NUM_THREADS, default 1): a model that leaves cores idle, which extra workers can
use. Both servers run at once (the one not measured idles) and the measurements interleave:
for each client count, ``--rounds`` rounds of 1 worker then N workers, so that a change in the
machine's load hits both alike. Each measurement: images/s and p50/p99 latency of the task's
unary RPC (PNG bytes in) from 1, 4 and 16 client threads, each on its own connection (so that
the kernel spreads them over the workers); the median over the rounds is reported. Prints the
ratio N workers / 1 worker per client count and writes benchmarks/results/<task>_workers.json.
The clients share the machine with the servers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import RESULTS_DIR, add_model_arguments, service_throughput, synth_png_images, write_results  # noqa: E402
from serving import BENCHES  # noqa: E402

CLIENTS = (1, 4, 16)


class ServedAddress(str):
    """ "HOST:PORT" of a served subprocess, plus ``pid``: its process (the supervisor with workers)."""

    pid: int = 0


@contextmanager
def served(
    store: Path, name: str, task: str, workers: int, threads: int, device: str, extra: Sequence[str] = ()
) -> Iterator[ServedAddress]:
    """``cvtasks serve --workers N`` (and ``extra`` serve flags, e.g. ``--gpu-decode on``) on a free
    port until the block ends; yields "HOST:PORT" with the server's ``pid``."""
    command = [sys.executable, "-m", "services.cli", "serve", "--task", task, "--model-store", str(store)]
    command += ["--models", name, "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)]
    command += ["--device", device, "--log-level", "warning", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        if " serving " not in f" {line}":
            raise RuntimeError(f"the server did not start: {line!r}")
        address = ServedAddress(line.strip().rsplit(" ", 1)[-1])
        address.pid = proc.pid
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    from services.client import CvtasksClient

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default="detection", choices=[t for t in BENCHES if t != "generation"])
    parser.add_argument("--workers", type=int, default=2, help="the worker count compared with 1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each worker's model")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements per configuration")
    add_model_arguments(parser, images=96)
    args = parser.parse_args()
    bench, device = BENCHES[args.task], args.device or "cpu"
    images = synth_png_images(args.images, args.size)
    options = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per client thread
    rows: dict[str, dict[str, dict[str, float]]] = {}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        store, name = (
            (Path(args.model_store), args.model or bench.model) if args.model_store else bench.store(Path(tmp))
        )
        counts = [str(w) for w in (1, args.workers)]
        addresses = {
            w: stack.enter_context(served(store, name, args.task, int(w), args.threads, device)) for w in counts
        }

        def call(client, data):
            return bench.call(client, data, argparse.Namespace(beam=3, count=1))

        for clients in CLIENTS:
            for _ in range(args.rounds):
                for w, address in addresses.items():
                    client = lambda a=address: CvtasksClient(a, timeout=120, channel_options=options)  # noqa: E731
                    runs.setdefault((w, clients), []).append(service_throughput(client, call, images, clients))
        for (w, clients), measured in runs.items():
            keys = measured[0].keys()
            rows.setdefault(w, {})[str(clients)] = {k: statistics.median(m[k] for m in measured) for k in keys}
    one, many = rows["1"], rows[str(args.workers)]
    ratios = {str(c): many[str(c)]["images_per_s"] / one[str(c)]["images_per_s"] for c in CLIENTS}
    print(
        f"device: {device} ({os.cpu_count()} cores); model: {name}; {args.threads} torch thread(s) per worker; "
        f"{len(images)} images of {args.size} px a measurement, median of {args.rounds} interleaved rounds"
    )
    print(f"{'workers':8s}" + "".join(f"{f'{c} clients img/s':>18s} {'p50':>8s}" for c in CLIENTS))
    for label, row in rows.items():
        print(
            f"{label:8s}"
            + "".join(f"{row[str(c)]['images_per_s']:18.1f} {row[str(c)]['p50_ms']:5.1f} ms" for c in CLIENTS)
        )
    print(
        f"{args.workers} workers / 1 worker, images/s: "
        + ", ".join(f"{c} clients {ratios[str(c)]:.2f}" for c in CLIENTS)
    )
    extra = {"device": device, "cores": os.cpu_count(), "model": name, "threads_per_worker": args.threads}
    extra["rounds"] = args.rounds
    out = args.out or RESULTS_DIR / f"{args.task}_workers.json"
    write_results(out, {**extra, "images": len(images), "image_size": args.size, "workers": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
