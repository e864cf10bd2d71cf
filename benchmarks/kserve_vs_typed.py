"""The typed `Detect` RPC vs the KServe v2 `ModelInfer` path, same server, model and images, one run.

    python benchmarks/kserve_vs_typed.py [--model-store DIR --model NAME] [--images N] [--concurrency 1 4 16]

One server serves the detector; for each concurrency it measures (a) `cvtasks.v1.DetectionService/Detect`
with the project's client and (b) `inference.GRPCInferenceService/ModelInfer` with the stock
tritonclient (one encoded PNG per request as an IMAGE BYTES [1] tensor, all outputs), both with
the default options (score threshold 0.5). Prints images/s, p50/p99 latency and the ratio
KServe / typed, then writes benchmarks/results/kserve_vs_typed.json. Without --model-store it
stores a randomly initialised tiny detector (see detection_serving.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import compare_detector_paths, service_throughput  # noqa: E402


def typed_detect(client, data: bytes):
    return client.detect(data)


def kserve_detect(name: str):
    import tritonclient.grpc as grpcclient

    def call(client, data: bytes):
        tensor = grpcclient.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        return client.infer(name, [tensor], client_timeout=120)

    return call


def measure(
    store: Path, name: str, images: list[bytes], *, device: str, batch: int, concurrencies: list[int]
) -> dict[int, dict[str, dict[str, float]]]:
    import tritonclient.grpc as grpcclient

    from services.client import CvtasksClient
    from services.launch import running_server

    rows: dict[int, dict[str, dict[str, float]]] = {}
    with running_server(
        task="detection", model_store=store, models=[name], device=device, max_batch_size=batch
    ) as address:
        for c in concurrencies:
            typed = service_throughput(lambda: CvtasksClient(address, timeout=120), typed_detect, images, c)
            kserve = service_throughput(
                lambda: grpcclient.InferenceServerClient(address), kserve_detect(name), images, c
            )
            rows[c] = {
                "typed_detect": typed,
                "kserve_model_infer": kserve,
                "ratio_kserve_to_typed": kserve["images_per_s"] / typed["images_per_s"],
            }
    return rows


def print_rows(rows: dict[int, dict]) -> None:
    print(
        f"{'conc':>4}  {'typed Detect img/s':>18} {'p50':>7} {'p99':>7}   {'KServe ModelInfer img/s':>23} "
        f"{'p50':>7} {'p99':>7}   ratio"
    )
    for c, row in rows.items():
        t, k = row["typed_detect"], row["kserve_model_infer"]
        print(
            f"{c:4d}  {t['images_per_s']:18.1f} {t['p50_ms']:6.1f}ms {t['p99_ms']:6.1f}ms   "
            f"{k['images_per_s']:23.1f} {k['p50_ms']:6.1f}ms {k['p99_ms']:6.1f}ms   "
            f"{row['ratio_kserve_to_typed']:.2f}"
        )


def main() -> None:
    compare_detector_paths(__doc__, "kserve_vs_typed.json", measure, print_rows)


if __name__ == "__main__":
    main()
