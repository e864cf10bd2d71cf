"""The local batch engine on real tiny models and real image files: each task's outputs, bad
files recorded while the rest succeed, resume (skips, torn manifest line, changed job, --force),
and the bound on images in flight."""

from __future__ import annotations

import json
import shutil
import threading

import cv2
import numpy as np
import pytest
import torch

from models import checkpoints
from models.batch.engine import file_work, index_work, run_local
from models.batch.job import build_job
from models.batch.store import Manifest, list_inputs
from models.captioning import beam_search, image_input
from models.generation import latents, to_uint8
from models.preprocessing import decode_image, read_image, to_tensor
from models.segmentation import segment_image
from models.text import Vocabulary


@pytest.fixture(scope="module")
def folder(shapes_dir, tmp_path_factory):
    """16 test images (8 in a sub-folder), a corrupt .jpg, an empty .png and a text file."""
    root = tmp_path_factory.mktemp("batch-in")
    (root / "sub").mkdir()
    for i, path in enumerate(sorted((shapes_dir / "images" / "test").glob("*.png"))):
        shutil.copy(path, (root / "sub" if i % 2 else root) / path.name)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not matched by the image patterns")
    return root


def _run(store, name, task_name, folder, out, *, recursive=True, force=False, **options):
    model, config = checkpoints.load_model(store / name)
    task = build_job(task_name, config, out, **options)
    manifest = Manifest(out, task.job(), force=force)
    inputs = list_inputs(folder, recursive=recursive, exclude=[out])
    return run_local(task, model, file_work(task, inputs), manifest, batch_size=4, decode_workers=2, progress=False)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_listing_is_sorted_recursive_and_skips_the_output_folder(folder, tmp_path):
    keys = [f.key for f in list_inputs(folder, recursive=True)]
    assert keys == sorted(keys) and len(keys) == 18 and "notes.txt" not in keys
    assert sum(k.startswith("sub/") for k in keys) == 8
    assert len(list_inputs(folder)) == 10
    nested = folder / "out-inside"
    (nested / "masks").mkdir(parents=True)
    shutil.copy(folder / "sub" / "000002.png", nested / "masks" / "x.png")
    try:
        assert len(list_inputs(folder, recursive=True, exclude=[nested])) == 18
    finally:
        shutil.rmtree(nested)


def test_detection_rows_coco_file_pycocotools_can_evaluate_and_annotations(
    detector_store, folder, shapes_dir, tmp_path
):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "det"
    summary = _run(detector_store, "tiny-detector", "detection", folder, out, annotate=True, score_threshold=0.05)
    assert (summary.total, summary.processed, summary.failed) == (18, 16, 2)
    rows = _jsonl(out / "detections.jsonl")
    assert [r["input"] for r in rows] == sorted(r["input"] for r in rows) and len(rows) == 16
    assert all(r["width"] == r["height"] == 128 and r["detections"] for r in rows)
    assert all((out / r["annotated"]).is_file() for r in rows)
    assert cv2.imread(str(out / rows[0]["annotated"])).shape == (128, 128, 3)
    errors = {e["input"]: e["error"] for e in _jsonl(out / "errors.jsonl")}
    assert set(errors) == {"corrupt.jpg", "empty.png"} and "empty" in errors["empty.png"]

    results = COCO(str(out / "detections_coco.json"))  # loads as a COCO dataset: images, categories, annotations
    assert len(results.getImgIds()) == 16 and [c["name"] for c in results.loadCats(results.getCatIds())] == [
        "circle",
        "square",
        "triangle",
    ]
    gt = COCO(str(shapes_dir / "annotations" / "test.json"))
    gt_id = {img["file_name"]: img["id"] for img in gt.dataset["images"]}
    ours = {img["id"]: gt_id[img["file_name"].rsplit("/", 1)[-1]] for img in results.dataset["images"]}
    detections = [{**a, "image_id": ours[a["image_id"]]} for a in results.dataset["annotations"]]
    evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert evaluator.stats[1] > 0.3  # AP50 of the briefly trained tiny detector (~0.6)


def test_segmentation_masks_equal_a_direct_call_with_stats_csv_and_overlays(segmenter_store, folder, tmp_path):
    out = tmp_path / "seg"
    summary = _run(segmenter_store, "tiny-segmenter", "segmentation", folder, out, overlay=True)
    assert (summary.processed, summary.failed) == (16, 2)
    model, config = checkpoints.load_model(segmenter_store / "tiny-segmenter")
    rows = _jsonl(out / "segments.jsonl")
    for row in rows[:3]:
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        with torch.inference_mode():
            direct = segment_image(
                model,
                to_tensor(read_image(folder / row["input"])),
                mean=config.normalization["mean"],
                std=config.normalization["std"],
            )
        np.testing.assert_array_equal(mask, direct.labels)
        assert row["classes"]["circle"]["pixels"] == int((mask == 1).sum())
        assert decode_image((out / row["overlay"]).read_bytes()).shape == (128, 128, 3)
    header, *table = (out / "segments.csv").read_text().splitlines()
    assert header == "input,width,height,background,circle,square,triangle" and len(table) == 16
    assert abs(sum(float(v) for v in table[0].split(",")[3:]) - 1.0) < 1e-4


def test_captioning_rows_and_csv_equal_beam_search(captioner_store, folder, tmp_path):
    out = tmp_path / "cap"
    summary = _run(captioner_store, "tiny-captioner", "captioning", folder, out, recursive=False, beam_size=2)
    assert (summary.processed, summary.failed) == (8, 2)
    model, config = checkpoints.load_model(captioner_store / "tiny-captioner")
    vocab = Vocabulary(tuple(config.extra["vocab"]["words"]))
    rows = _jsonl(out / "captions.jsonl")
    image = image_input(read_image(folder / rows[0]["input"]), size=96)[None]
    with torch.inference_mode():
        best = beam_search(model, image, beam_size=2, max_length=12)[0][0]
    assert rows[0]["caption"] == vocab.decode(best.tokens)
    header, first, *_ = (out / "captions.csv").read_text().splitlines()
    assert header == "input,caption,score" and first.startswith(f"{rows[0]['input']},{rows[0]['caption']},")


def test_generation_draws_the_seeds_images_and_a_larger_count_adds_only_new_ones(generator_store, tmp_path):
    model, config = checkpoints.load_model(generator_store / "tiny-generator")
    out = tmp_path / "gen"

    def generate(count):
        task = build_job("generation", config, out, seed=5)
        return run_local(task, model, index_work(task, count), Manifest(out, task.job()), batch_size=8, progress=False)

    assert generate(10).processed == 10
    second = generate(12)
    assert (second.processed, second.skipped) == (2, 10)
    with torch.inference_mode():
        expected = to_uint8(model(latents(5, 12, 16)))
    rows = _jsonl(out / "generated.jsonl")
    assert [r["index"] for r in rows] == list(range(12))
    for row in rows:
        np.testing.assert_array_equal(decode_image((out / row["image"]).read_bytes()), expected[row["index"]])
    assert decode_image((out / "grid.png").read_bytes()).shape[2] == 3


def test_rerun_skips_done_inputs_retries_failed_ones_and_redoes_a_torn_line(segmenter_store, folder, tmp_path):
    out = tmp_path / "resume"
    assert _run(segmenter_store, "tiny-segmenter", "segmentation", folder, out).processed == 16
    manifest = (out / "manifest.jsonl").read_bytes()
    last = manifest.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    torn_key = json.loads(last)["key"]
    (out / "manifest.jsonl").write_bytes(manifest[: len(manifest) - len(last) // 2 - 1])  # killed mid-line
    (out / "masks" / ".x.png.123.tmp").write_bytes(b"half")  # a killed run's half-written file
    fixed = folder / "empty.png"
    shutil.copy(folder / "sub" / "000002.png", fixed)
    try:
        again = _run(segmenter_store, "tiny-segmenter", "segmentation", folder, out)
    finally:
        fixed.write_bytes(b"")
    redone = {torn_key, "empty.png"}
    assert (again.processed, again.skipped, again.failed) == (2, 15, 1) and len(redone) == 2
    rows = _jsonl(out / "segments.jsonl")
    assert len(rows) == 17 and len({r["input"] for r in rows}) == 17
    assert [e["input"] for e in _jsonl(out / "errors.jsonl")] == ["corrupt.jpg"]
    assert not list(out.rglob("*.tmp"))


def test_another_job_in_the_same_folder_is_refused_unless_forced(segmenter_store, folder, tmp_path):
    out = tmp_path / "job"
    _run(segmenter_store, "tiny-segmenter", "segmentation", folder, out, recursive=False)
    with pytest.raises(ValueError, match="another job.*max_side.*--force"):
        _run(segmenter_store, "tiny-segmenter", "segmentation", folder, out, recursive=False, max_side=512)
    forced = _run(
        segmenter_store, "tiny-segmenter", "segmentation", folder, out, recursive=False, max_side=512, force=True
    )
    assert forced.skipped == 0 and forced.processed == 8


def test_images_in_flight_stay_within_the_bound(segmenter_store, folder, tmp_path):
    model, config = checkpoints.load_model(segmenter_store / "tiny-segmenter")
    task = build_job("segmentation", config, tmp_path / "bound")
    held, peak, lock = [0], [0], threading.Lock()
    prepare, record = task.prepare, task.record

    def counting_prepare(data):
        with lock:
            held[0] += 1
            peak[0] = max(peak[0], held[0])
        return prepare(data)

    def counting_record(*args, **kwargs):
        row = record(*args, **kwargs)
        with lock:
            held[0] -= 1
        return row

    task.prepare, task.record = counting_prepare, counting_record
    inputs = [f for f in list_inputs(folder, recursive=True) if f.key.endswith("0.png") or "/" in f.key]
    summary = run_local(
        task,
        model,
        file_work(task, inputs),
        Manifest(tmp_path / "bound", task.job()),
        batch_size=2,
        decode_workers=3,
        max_in_flight=3,
        progress=False,
    )
    assert summary.processed == len(inputs) and 0 < peak[0] <= 3


def test_bad_engine_settings_are_refused(segmenter_store, tmp_path):
    model, config = checkpoints.load_model(segmenter_store / "tiny-segmenter")
    task = build_job("segmentation", config, tmp_path)
    with pytest.raises(ValueError, match="max_in_flight >= batch_size"):
        run_local(task, model, [], Manifest(tmp_path, task.job()), batch_size=8, max_in_flight=4)
    with pytest.raises(ValueError, match="needs a detection model"):
        build_job("detection", config, tmp_path)
