"""Transfer learning is real: at 20 labelled target images per class, starting from a classifier
trained on the source domain beats training from scratch by at least 0.15 held-out top-1 (the
README's transfer table, its 20-label rows: benchmarks/transfer.py). Slow (~2-4 min)."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.transfer import ROWS, best_gain, markdown, run_table


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_best_transfer_mode_beats_scratch_at_20_labels_per_class(tmp_path, capsys):
    rows = [row for row in ROWS if row.start in ("random", "source") and row.architecture == "classifier_tiny"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script: faster on a shared CPU, and the same numbers as the README's
    try:
        started = time.perf_counter()
        table = run_table(tmp_path, labels=[20], rows=rows, progress=False)
    finally:
        torch.set_num_threads(threads)
    minutes = (time.perf_counter() - started) / 60
    top1 = {r["row"]: r["test_top1"] for r in table["rows"]}
    gain = best_gain(table["rows"], 20)
    with capsys.disabled():
        print(f"\n{markdown(table['rows'])}best transfer - scratch {gain:+.3f}, {minutes:.1f} min in all")
    assert set(top1) == {"scratch", "frozen", "last 2", "full (backbone lr x0.1)"}
    assert all(r["epochs"] == table["rows"][0]["epochs"] for r in table["rows"])  # every row trains alike
    assert gain >= 0.15
