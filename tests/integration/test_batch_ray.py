"""The Ray Data engine (``--engine ray``) on a local Ray instance: the same results files, masks and
errors as the local engine, per-image files written by the actors, nothing redone on a re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray Data copying its own context

from models import checkpoints  # noqa: E402
from models.batch.engine import Summary, file_work, run_local  # noqa: E402
from models.batch.job import build_job  # noqa: E402
from models.batch.ray_engine import run_ray  # noqa: E402
from models.batch.store import InputFile, Manifest, list_inputs  # noqa: E402
from models.preprocessing import decode_image  # noqa: E402
from models.synth import generate_shapes  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray instance for the module; 2 CPUs hold one actor and one read task."""
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """8 synthetic 96 px images, a corrupt file and an empty one."""
    root = tmp_path_factory.mktemp("ray-batch")
    generate_shapes(root, splits={"test": 8}, image_size=96, seed=1)
    folder = root / "images" / "test"
    (folder / "bad.jpg").write_bytes(b"not an image")
    (folder / "empty.png").write_bytes(b"")
    return folder


def _run(
    engine: str,
    store: Path,
    name: str,
    inputs: list[InputFile],
    out: Path,
    *,
    actors: int = 1,
    device: str | None = None,
    **options,
) -> Summary:
    folder = checkpoints.resolve(store, name)
    config = checkpoints.load_config(folder)
    task = build_job(config.task, config, out, **options)
    manifest = Manifest(out, task.job())
    if engine == "ray":
        return run_ray(task, folder, inputs, manifest, batch_size=4, actors=actors, device=device, progress=False)
    model, _ = checkpoints.load_model(folder)
    return run_local(task, model, file_work(task, inputs), manifest, batch_size=4, progress=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_segmentation_same_files_as_local_engine(segmenter_store, images, tmp_path):
    # a file listed but gone before the run: both engines record why
    inputs = [*list_inputs(images), InputFile(images / "gone.png", "gone.png")]
    local = _run("local", segmenter_store, "tiny-segmenter", inputs, tmp_path / "local", overlay=True)
    remote = _run("ray", segmenter_store, "tiny-segmenter", inputs, tmp_path / "ray", overlay=True)

    assert (remote.total, remote.processed, remote.failed, remote.skipped) == (11, 8, 3, 0)
    assert [p.name for p in remote.outputs] == [p.name for p in local.outputs]
    for name in ("segments.jsonl", "segments.csv", "errors.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    rows = _rows(tmp_path / "ray" / "segments.jsonl")
    assert len(rows) == 8
    for row in rows:
        for kind in ("mask", "overlay"):
            written = (tmp_path / "ray" / row[kind]).read_bytes()
            assert written == (tmp_path / "local" / row[kind]).read_bytes(), row[kind]
        assert decode_image((tmp_path / "ray" / row["overlay"]).read_bytes()).shape == (96, 96, 3)
    errors = {e["input"]: e["error"] for e in _rows(tmp_path / "ray" / "errors.jsonl")}
    assert sorted(errors) == ["bad.jpg", "empty.png", "gone.png"]
    assert "unrecognised image format" in errors["bad.jpg"]
    assert "empty" in errors["empty.png"]
    assert errors["gone.png"] == "could not read the file: No such file or directory"


@pytest.fixture(scope="module")
def detections(detector_store, images, tmp_path_factory) -> tuple[Path, Path]:
    """The good images through both engines with annotated copies: (local out, Ray out)."""
    inputs = [f for f in list_inputs(images) if f.key not in {"bad.jpg", "empty.png"}]
    outs = tmp_path_factory.mktemp("local-det"), tmp_path_factory.mktemp("ray-det")
    for engine, out in zip(("local", "ray"), outs):
        summary = _run(engine, detector_store, "tiny-detector", inputs, out, annotate=True)
        assert (summary.processed, summary.failed) == (8, 0)
    return outs


def test_detection_same_rows_as_local_engine(detections):
    local, remote = (_rows(out / "detections.jsonl") for out in detections)
    assert [r["input"] for r in remote] == [r["input"] for r in local] and len(remote) == 8
    assert sum(len(r["detections"]) for r in remote) > 0
    for got, want in zip(remote, local):
        assert {k: v for k, v in got.items() if k != "detections"} == {
            k: v for k, v in want.items() if k != "detections"
        }
        assert [(d["label"], d["class"]) for d in got["detections"]] == [
            (d["label"], d["class"]) for d in want["detections"]
        ]
        for d, e in zip(got["detections"], want["detections"]):
            assert d["box"] == pytest.approx(e["box"], abs=1e-3) and d["score"] == pytest.approx(e["score"], abs=1e-3)
        assert decode_image((detections[1] / got["annotated"]).read_bytes()).shape == (96, 96, 3)
    coco = json.loads((detections[1] / "detections_coco.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == [r["input"] for r in local]
    assert len(coco["annotations"]) == sum(len(r["detections"]) for r in local)


def test_classification_same_rows_as_local_engine(classifier_store, images, tmp_path):
    inputs = list_inputs(images)
    for engine in ("local", "ray"):
        summary = _run(engine, classifier_store, "tiny-classifier", inputs, tmp_path / engine, top_k=2)
        assert (summary.processed, summary.failed) == (8, 2)
    local, remote = (_rows(tmp_path / engine / "classifications.jsonl") for engine in ("local", "ray"))
    assert [r["input"] for r in remote] == [r["input"] for r in local] and len(remote) == 8
    for got, want in zip(remote, local):
        assert [x["class"] for x in got["labels"]] == [x["class"] for x in want["labels"]] and len(got["labels"]) == 2
        assert [x["probability"] for x in got["labels"]] == pytest.approx([x["probability"] for x in want["labels"]])


def test_rerun_processes_nothing(detector_store, images, detections):
    out = detections[1]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "annotated").iterdir()}
    results = (out / "detections.jsonl").read_bytes()
    inputs = [f for f in list_inputs(images) if f.key not in {"bad.jpg", "empty.png"}]
    summary = _run("ray", detector_store, "tiny-detector", inputs, out, annotate=True)
    assert (summary.total, summary.processed, summary.skipped, summary.failed) == (8, 0, 8, 0)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "annotated").iterdir()} == before
    assert (out / "detections.jsonl").read_bytes() == results


def test_refuses_what_it_cannot_run(segmenter_store, generator_store, images, tmp_path):
    inputs = list_inputs(images)
    with pytest.raises(ValueError, match="the Ray cluster has 2; pass --actors 1 or fewer"):
        _run("ray", segmenter_store, "tiny-segmenter", inputs, tmp_path / "seg", actors=2)
    with pytest.raises(ValueError, match="need 1 GPU"):
        _run("ray", segmenter_store, "tiny-segmenter", inputs, tmp_path / "seg", device="cuda")
    with pytest.raises(ValueError, match="generation is not supported by --engine ray"):
        _run("ray", generator_store, "tiny-generator", [], tmp_path / "gen")
    assert not (tmp_path / "seg" / "masks").exists()
