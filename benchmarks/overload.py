"""A flood at 10x a model's capacity: how fast the server refuses what it cannot take, typed and KServe.

    python benchmarks/overload.py [--images N] [--size PX] [--factor 10]

One server (`cvtasks serve` in its own process, so that the client does not share its
interpreter) serves a randomly initialised tiny detector with the default limits (capacity per
model: --max-queue + --max-batch-size requests). For each path (`Detect` with the project's
client, `ModelInfer` with the stock tritonclient) it sends factor x capacity requests of one
PNG at once from one asyncio client, and reports the latency of the refused calls
(RESOURCE_EXHAUSTED on the typed path, UNAVAILABLE on KServe, as Triton answers) and of the
accepted ones, at p50 and p99, plus the ratio refused / accepted at p50, and an idle request's
latency for scale. Writes benchmarks/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import RESULTS_DIR, device_name, write_results  # noqa: E402
from bench_models import detector_store  # noqa: E402

from models.preprocessing import encode_image  # noqa: E402
from models.train.common import pick_device  # noqa: E402

EXTRA: list[str] = []  # extra `cvtasks serve` flags (--serve-args)


async def _flood(call, count: int) -> list[tuple[str, float]]:
    async def one() -> tuple[str, float]:
        started = time.perf_counter()
        status = await call()
        return status, (time.perf_counter() - started) * 1000

    return list(await asyncio.gather(*(one() for _ in range(count))))


def _status_of(rpc, request):
    """An async call of ``rpc(request)`` that answers its status name ("OK" when it succeeded)."""
    import grpc

    async def call() -> str:
        try:
            await rpc(request, timeout=600)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    return call


def _typed(address: str, image: bytes, model: str = ""):
    import grpc

    from services.client import detect_request
    from services.pb import detection_pb2_grpc

    channel = grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    return channel, _status_of(
        detection_pb2_grpc.DetectionServiceStub(channel).Detect, detect_request(image, model=model)
    )


def _kserve(address: str, image: bytes, model: str):
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.aio.insecure_channel(address)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
    return channel, _status_of(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request)


def _summary(results: list[tuple[str, float]]) -> dict[str, float | int]:
    refused = [ms for status, ms in results if status != "OK"]
    accepted = [ms for status, ms in results if status == "OK"]
    row: dict[str, float | int] = {"sent": len(results), "accepted": len(accepted), "refused": len(refused)}
    for name, values in (("refused", refused), ("accepted", accepted)):
        if values:
            row[f"{name}_p50_ms"] = float(np.percentile(values, 50))
            row[f"{name}_p99_ms"] = float(np.percentile(values, 99))
    if refused and accepted:
        row["refused_to_accepted_p50"] = row["refused_p50_ms"] / row["accepted_p50_ms"]
    return row


async def _measure(address: str, image: bytes, model: str, count: int) -> dict[str, dict]:
    """Each path flooded with ``count`` requests at once; first the same flood naming a model the
    server lacks (NOT_FOUND: the cheapest answer a server can give, what transport alone costs)."""
    rows = {}
    paths = (
        ("typed Detect, unknown model", _typed(address, image, "no-such-model")),
        ("typed Detect", _typed(address, image)),
        ("KServe ModelInfer, unknown model", _kserve(address, image, "no-such-model")),
        ("KServe ModelInfer", _kserve(address, image, model)),
    )
    for path, (channel, call) in paths:
        async with channel:
            await call()  # connect and warm up
            idle = await _flood(call, 1)
            rows[path] = {**_summary(await _flood(call, count)), "idle_ms": idle[0][1]}
    for path in ("typed Detect", "KServe ModelInfer"):
        cheapest = rows[f"{path}, unknown model"]
        if "refused_p50_ms" in rows[path] and "refused_p50_ms" in cheapest:
            rows[path]["refused_to_not_found_p50"] = rows[path]["refused_p50_ms"] / cheapest["refused_p50_ms"]
    return rows


@contextlib.contextmanager
def _server(store: Path, device) -> Iterator[str]:
    """`cvtasks serve` in a subprocess on a free port; yields its address once it is serving."""
    command = [
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "--task",
        "detection",
        "--model-store",
        str(store),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--device",
        str(device),
        *EXTRA,
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    try:
        line = proc.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"the server did not start: {line!r}")
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="side of the PNG sent (pixels)")
    parser.add_argument("--factor", type=int, default=10, help="requests sent at once, as a multiple of capacity")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(RESULTS_DIR / "overload.json"))
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[], help="extra `cvtasks serve` flags")
    args = parser.parse_args()
    EXTRA.extend(args.serve_args)

    from services.host import ServingConfig

    device = pick_device(args.device)
    serving = ServingConfig()
    capacity = serving.max_queue_size + serving.max_batch_size
    image = encode_image(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        store, name = detector_store(Path(tmp))
        with _server(store, device) as address:
            rows = asyncio.run(_measure(address, image, name, args.factor * capacity))
    print(
        f"device: {device_name(device)}; {args.factor} x capacity ({capacity}) = {args.factor * capacity} "
        f"requests of a {args.size} px PNG ({len(image) // 1024} KiB) at once"
    )
    for path, row in rows.items():
        print(
            f"{path:33s}: {row['refused']:3d} refused, p50 {row.get('refused_p50_ms', 0):7.1f} ms, "
            f"p99 {row.get('refused_p99_ms', 0):7.1f} ms | {row['accepted']:3d} accepted, p50 "
            f"{row.get('accepted_p50_ms', 0):7.1f} ms | idle request {row['idle_ms']:5.1f} ms"
        )
        if "refused_to_not_found_p50" in row:
            print(
                f"{'':35s}refused / accepted p50 {row.get('refused_to_accepted_p50', float('nan')):.2f}, "
                f"refused / unknown-model p50 {row['refused_to_not_found_p50']:.2f}"
            )
    setup = {"device": device_name(device), "capacity": capacity, "factor": args.factor, "image_size": args.size}
    write_results(args.out, {**setup, "paths": rows})


if __name__ == "__main__":
    main()
