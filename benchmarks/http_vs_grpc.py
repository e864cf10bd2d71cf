"""HTTP vs gRPC on the same server, model and images: the typed route against the typed RPC, and
KServe v2 REST against KServe v2 gRPC, at 1, 4 and 16 clients.

    python benchmarks/http_vs_grpc.py [--model-store DIR --model NAME] [--images N] [--concurrency 1 4 16]

One server (`cvtasks serve --http-port`'s code, in this process) serves the detector over both
ports; for each concurrency it measures, with one encoded PNG per request and the default options:

- gRPC `Detect` (the project's client) and HTTP `POST /v1/models/{name}/detect` (the PNG as the
  body, JSON back, one keep-alive connection per client thread, the standard library's
  http.client);
- gRPC `ModelInfer` (tritonclient.grpc) and HTTP `/v2/models/{name}/infer` (tritonclient.http,
  binary tensors), IMAGE BYTES [1], all outputs.

Prints images/s and p50/p99 latency of each and the ratios HTTP / gRPC (images/s), then writes
benchmarks/results/http_vs_grpc.json. Without --model-store it stores a randomly initialised tiny
detector (see bench_models.py). Clients and server share the machine's cores.
"""

from __future__ import annotations

import http.client
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import compare_detector_paths, service_throughput  # noqa: E402
from kserve_vs_typed import kserve_detect, typed_detect  # noqa: E402


class HttpClient:
    """One keep-alive connection posting PNGs to a typed route."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.path, self.connection = parts.path, http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def detect(self, data: bytes) -> bytes:
        self.connection.request("POST", self.path, body=data, headers={"Content-Type": "image/png"})
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        return body

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def kserve_rest_detect(name: str):
    import tritonclient.http as httpclient

    def call(client, data: bytes):
        tensor = httpclient.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        return client.infer(name, [tensor])

    return call


class _Closing:
    """tritonclient.http's client as a context manager (service_throughput opens one per thread)."""

    def __init__(self, client) -> None:
        self.client = client

    def __enter__(self):
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def measure(
    store: Path, name: str, images: list[bytes], *, device: str, batch: int, concurrencies: list[int]
) -> dict[int, dict]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from services.client import CvtasksClient
    from services.launch import running_server

    rows: dict[int, dict] = {}
    with running_server(
        task="detection", model_store=store, models=[name], device=device, max_batch_size=batch, http_port=0
    ) as address:
        route = f"{address.http_url}/v1/models/{name}/detect"
        rest = address.http_url.removeprefix("http://")
        for c in concurrencies:
            paths = {
                "grpc_typed": service_throughput(lambda: CvtasksClient(address, timeout=120), typed_detect, images, c),
                "http_typed": service_throughput(lambda: HttpClient(route), lambda cl, d: cl.detect(d), images, c),
                "grpc_kserve": service_throughput(
                    lambda: grpcclient.InferenceServerClient(address), kserve_detect(name), images, c
                ),
                "http_kserve": service_throughput(
                    lambda: _Closing(httpclient.InferenceServerClient(rest, concurrency=1, network_timeout=120)),
                    kserve_rest_detect(name),
                    images,
                    c,
                ),
            }
            rows[c] = {
                **paths,
                "ratio_http_to_grpc_typed": paths["http_typed"]["images_per_s"] / paths["grpc_typed"]["images_per_s"],
                "ratio_http_to_grpc_kserve": paths["http_kserve"]["images_per_s"]
                / paths["grpc_kserve"]["images_per_s"],
            }
    return rows


def print_rows(rows: dict[int, dict]) -> None:
    names = ("grpc_typed", "http_typed", "grpc_kserve", "http_kserve")
    print(f"{'conc':>4}  " + "  ".join(f"{n + ' img/s (p50)':>24}" for n in names) + "   HTTP/gRPC typed  KServe")
    for c, row in rows.items():
        cells = "  ".join(f"{row[n]['images_per_s']:12.1f} ({row[n]['p50_ms']:6.1f} ms)" for n in names)
        print(f"{c:4d}  {cells}   {row['ratio_http_to_grpc_typed']:15.2f}  {row['ratio_http_to_grpc_kserve']:6.2f}")


def main() -> None:
    compare_detector_paths(__doc__, "http_vs_grpc.json", measure, print_rows)


if __name__ == "__main__":
    main()
