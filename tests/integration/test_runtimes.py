"""Serving runtimes and precisions (models/runtimes.py) on real servers on port 0: each model of the
tests' tiny classifier, U-Net and DCGAN is copied into one store once per runtime (its config.json
``extra.serving`` says which), and every copy must answer as the eager one does.

Bounds: fp32 runtimes as the export's TOLERANCES (the same top-1, probabilities within 1e-4; label
maps differing in at most 0.1 % of pixels; generated pixels within one uint8 level, the rounding of
1e-4). bf16 (autocast: 8 bits of mantissa) gets its own: probabilities within 0.02 and the same top-1
wherever eager's two best are more than 0.04 apart; label maps differing in at most 2 % of pixels;
generated pixels within 8 levels (mean under 1.5).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import checkpoints
from models.errors import ModelStoreError
from models.export import export_model
from models.preprocessing import decode_image, encode_image, read_image
from models.runtimes import RuntimeChoice, serve_with
from models.tasks import get_task
from services.cli import build_parser
from services.client import CvtasksClient
from services.host import ModelHost, ServingConfig
from services.launch import running_server
from tests.devices import ON_CUDA
from tests.web import call

TASKS = ("classification", "segmentation", "generation")
SOURCES = {  # task -> (fixture, model name)
    "classification": ("classifier_store", "tiny-classifier"),
    "segmentation": ("segmenter_store", "tiny-segmenter"),
    "generation": ("generator_store", "tiny-generator"),
}
# variant -> config.json extra.serving; "eager" has none (the server's default). The default pass
# compiles the DCGAN only (~30 s cold on the 2-core CPU, seconds once inductor's cache is warm);
# the compiled classifier and U-Net and the bf16 U-Net (emulated bf16 here) are the slow test's.
FAST = {"eager": None, "onnx": {"runtime": "onnxruntime"}, "bf16": {"precision": "bf16"}}
COMPILED = {"compiled": {"runtime": "compiled"}}


def _copy(source: Path, store: Path, variant: str, serving: dict | None) -> str:
    """``source`` (a model folder) into ``store`` as ``<name>-<variant>`` with ``serving`` set."""
    config = checkpoints.load_config(source)
    name = f"{config.name}-{variant}"
    (store / name).mkdir(parents=True)
    shutil.copyfile(source / checkpoints.WEIGHTS_FILE, store / name / checkpoints.WEIGHTS_FILE)
    extra = {**config.extra, **({"serving": serving} if serving else {})}
    stored = {**config.to_json(), "name": name, "extra": extra}
    (store / name / checkpoints.CONFIG_FILE).write_text(json.dumps(stored))
    return name


def _sharpened(classifier_store: Path, root: Path) -> Path:
    """The tiny classifier with its head scaled 100x: random weights give near-equal probabilities
    (a 0.005 margin), so bf16's top-1 would be compared on ties; this one is decided (0.99)."""
    model, config = checkpoints.load_model(classifier_store / "tiny-classifier")
    with torch.no_grad():
        model.fc.weight.mul_(100)
        model.fc.bias.mul_(100)
    return checkpoints.save_model(model, config, root / "sharpened" / config.name)


def _store(request, root: Path, variants: dict[str, dict | None], tasks=TASKS) -> Path:
    for task in tasks:
        fixture, name = SOURCES[task]
        source = request.getfixturevalue(fixture) / name
        if task == "classification":
            source = _sharpened(source.parent, root.parent / f"{root.name}-sources")
        for variant, serving in variants.items():
            _copy(source, root, variant, serving)
    return root


@pytest.fixture(scope="module")
def address(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime-store")
    store = _store(request, root, FAST, tasks=("classification",))
    _store(request, root, {**FAST, **COMPILED}, tasks=("generation",))
    _store(request, root, FAST if ON_CUDA else {k: FAST[k] for k in ("eager", "onnx")}, tasks=("segmentation",))
    cache = tmp_path_factory.mktemp("export-cache")
    with running_server(task=list(TASKS), model_store=store, export_cache=str(cache), http_port=0) as served:
        served.cache = cache  # type: ignore[attr-defined]
        yield served


@pytest.fixture(scope="module")
def images(shapes_dir) -> list[bytes]:
    """Six test PNGs, and two crops of sizes no check at load used (not multiples of 32)."""
    paths = sorted((shapes_dir / "images" / "test").glob("*.png"))[:6]
    crops = [read_image(paths[0])[:100, :70], read_image(paths[1])[20:, 5:]]
    return [p.read_bytes() for p in paths] + [encode_image(c) for c in crops]


def _variants(address, task: str) -> list[str]:
    with CvtasksClient(address) as client:
        prefix = SOURCES[task][1] + "-"
        return sorted(m.name.removeprefix(prefix) for m in client.list_models(task) if m.name.startswith(prefix))


def test_model_info_says_the_runtime_and_precision_of_every_model(address):
    with CvtasksClient(address) as client:
        infos = {m.name: m for m in client.list_models()}
    assert infos["tiny-classifier-onnx"].runtime == "onnxruntime"
    assert infos["tiny-generator-compiled"].runtime == "compiled"
    assert (infos["tiny-generator-bf16"].runtime, infos["tiny-generator-bf16"].precision) == ("eager", "bf16")
    assert (infos["tiny-segmenter-eager"].runtime, infos["tiny-segmenter-eager"].precision) == ("eager", "fp32")
    listed = call(f"{address.http_url}/v1/models").json()["models"]
    assert {m["name"]: m["runtime"] for m in listed}["tiny-segmenter-onnx"] == "onnxruntime"
    # the export onnxruntime serves was made at load into the cache, one per model
    assert sorted(p.name.rsplit("-", 1)[0] for p in address.cache.iterdir()) == [
        "tiny-classifier-onnx",
        "tiny-generator-onnx",
        "tiny-segmenter-onnx",
    ]


def test_classifications_agree_with_eager(address, images):
    with CvtasksClient(address, timeout=60) as client:
        answers = {
            v: [client.classify(b, model=f"tiny-classifier-{v}", top_k=3).classes for b in images]
            for v in _variants(address, "classification")
        }
    assert "bf16" in answers and set(answers) - {"eager", "bf16"}  # bf16 and a fp32 runtime compared
    decided = 0
    for variant, got in answers.items():
        bound = 2e-2 if variant == "bf16" else 1e-4
        for ours, theirs in zip(answers["eager"], got):
            probs = {c.label: c.probability for c in ours}
            assert all(abs(probs[c.label] - c.probability) <= bound for c in theirs if c.label in probs), variant
            if variant != "bf16" or ours[0].probability - ours[1].probability > 2 * bound:
                assert theirs[0].label == ours[0].label, variant
                decided += variant == "bf16"
    assert decided >= 2  # bf16's top-1 was compared on some images, not none


def _label_map(response) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(response.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)


def test_label_maps_agree_with_eager(address, images):
    with CvtasksClient(address, timeout=120) as client:
        maps = {
            v: [_label_map(client.segment(b, model=f"tiny-segmenter-{v}")) for b in images]
            for v in _variants(address, "segmentation")
        }
    assert set(maps) - {"eager"}  # some runtime was compared with eager
    for variant, got in maps.items():
        bound = 2e-2 if variant == "bf16" else 1e-3
        for ours, theirs in zip(maps["eager"], got):
            assert ours.shape == theirs.shape
            assert (ours != theirs).mean() <= bound, f"{variant}: {(ours != theirs).mean():.4f} of pixels differ"


def _pixels(response) -> np.ndarray:
    return np.stack([decode_image(i.png).astype(np.int16) for i in response.images])


def test_generated_images_agree_with_eager(address):
    with CvtasksClient(address, timeout=60) as client:
        drawn = {
            v: [_pixels(client.generate(count=c, seed=s, model=f"tiny-generator-{v}")) for s, c in ((1, 4), (2, 1))]
            for v in _variants(address, "generation")
        }
    assert {"onnx", "compiled", "bf16"} <= set(drawn)
    for variant, got in drawn.items():
        for ours, theirs in zip(drawn["eager"], got):
            diff = np.abs(ours - theirs)
            if variant == "bf16":
                assert diff.max() <= 8 and diff.mean() < 1.5, f"bf16: up to {diff.max()}, mean {diff.mean():.2f}"
            else:
                assert diff.max() <= 1, f"{variant}: pixels differ by up to {diff.max()} levels"


def test_explain_runs_the_eager_model_under_onnxruntime(address, images):
    """Grad-CAM needs gradients, which onnxruntime does not give: that forward runs in PyTorch."""
    with CvtasksClient(address, timeout=60) as client:
        ours = client.classify(images[0], model="tiny-classifier-eager", explain=True)
        theirs = client.classify(images[0], model="tiny-classifier-onnx", explain=True)
    assert theirs.heatmap_png and decode_image(theirs.heatmap_png).max() == 255
    assert np.abs(decode_image(ours.heatmap_png).astype(int) - decode_image(theirs.heatmap_png)).max() <= 1


def test_the_server_flag_and_a_stored_export(classifier_store, tmp_path, images):
    """``runtime=`` (``--runtime``) for every model; a folder that holds an ONNX export serves it,
    after checking it against its weights: a stale export fails the load, naming the disagreement."""
    store = tmp_path / "store"
    export_model(classifier_store / "tiny-classifier", "onnx", store / "tiny-classifier")
    cache = tmp_path / "cache"
    with running_server(task="classification", model_store=store, runtime="onnxruntime", export_cache=str(cache)) as a:
        with CvtasksClient(a) as client:
            assert client.get_model("tiny-classifier").runtime == "onnxruntime"
            assert len(client.classify(images[0]).classes) == 3
    assert not cache.exists()  # the folder's own export served: nothing exported again
    config = checkpoints.load_config(classifier_store / "tiny-classifier")
    torch.manual_seed(1)  # another classifier's export in its place
    checkpoints.save_model(get_task("classification").build_model(config).eval(), config, tmp_path / "other")
    export_model(tmp_path / "other", "onnx", tmp_path / "other-export")
    shutil.copyfile(tmp_path / "other-export" / "model.onnx", store / "tiny-classifier" / "model.onnx")
    host = ModelHost(store, get_task("classification"), ServingConfig(device="cpu", runtime="onnxruntime"))
    with pytest.raises(ModelStoreError, match="runtime onnxruntime at fp32 on cpu: ExportError: the export disagrees"):
        asyncio.run(host.load("tiny-classifier"))


def test_what_a_runtime_cannot_serve_is_refused_saying_what_can(random_detector_store, classifier_store, tmp_path):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; choose one of eager, compiled, onnxruntime"):
        ServingConfig(runtime="tensorrt")
    with pytest.raises(ValueError, match="fp16 autocast runs on CUDA only; on the CPU serve bf16 or fp32"):
        ModelHost(classifier_store, get_task("classification"), ServingConfig(device="cpu", precision="fp16"))
    detection = ModelHost(random_detector_store, get_task("detection"), ServingConfig(device="cpu", runtime="compiled"))
    with pytest.raises(ModelStoreError, match="detection models do not serve compiled: torch.compile of a Faster"):
        asyncio.run(detection.load("random-detector"))
    _copy(classifier_store / "tiny-classifier", tmp_path, "odd", {"runtime": "onnx"})
    host = ModelHost(tmp_path, get_task("classification"), ServingConfig(device="cpu"))
    with pytest.raises(ModelStoreError, match="tiny-classifier-odd/config.json: unknown runtime 'onnx'"):
        asyncio.run(host.load("tiny-classifier-odd"))


def test_a_compiled_model_compiles_nothing_after_load(generator_store, tmp_path):
    """An input the load's graphs do not fit runs eager at once: compiling it would stall the batcher
    (minutes for a U-Net on the 2-core CPU) and dynamo's recompile limit would end compiling."""
    from torch._dynamo.utils import counters

    folder = generator_store / "tiny-generator"
    model, config = checkpoints.load_model(folder)
    served = serve_with(model, config, folder, torch.device("cpu"), RuntimeChoice("compiled"), cache=tmp_path)
    assert served.runtime == "compiled"
    graphs = counters["stats"]["unique_graphs"]
    eager = type(model.net).forward.__get__(model.net)
    with torch.inference_mode():
        for latents in (torch.randn(5, 16, 1, 1), torch.randn(2, 16, 2, 2)):  # a batch the check did not use; 2 x 2
            torch.testing.assert_close(model.net(latents), eager(latents), rtol=0, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs


def test_serve_flags_and_their_environment_variables(monkeypatch):
    args = build_parser(["serve"]).parse_args(["serve", "--task", "segmentation", "--runtime", "onnxruntime"])
    assert (args.runtime, args.precision) == ("onnxruntime", "fp32")
    monkeypatch.setenv("CVTASKS_RUNTIME", "compiled")
    monkeypatch.setenv("CVTASKS_PRECISION", "bf16")
    args = build_parser(["serve"]).parse_args(["serve", "--task", "segmentation"])
    assert (args.runtime, args.precision) == ("compiled", "bf16")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 10 min was not enough on the loaded 2-core CPU: inductor compiles the U-Net cold
def test_compiled_classifier_and_segmenter_and_a_bf16_segmenter_agree_with_eager(request, tmp_path, images):
    """Minutes on the 2-core CPU: inductor compiles each model for the shapes of the check at load,
    and the U-Net's bf16 convolutions run emulated (no native bf16)."""
    variants = {"eager": None, **COMPILED, "bf16": {"precision": "bf16"}}
    store = _store(request, tmp_path, variants, tasks=("classification", "segmentation"))
    with running_server(task=["classification", "segmentation"], model_store=store, ready_timeout_s=1800) as address:
        assert {"compiled", "bf16"} <= set(_variants(address, "segmentation"))
        assert "compiled" in _variants(address, "classification")
        test_label_maps_agree_with_eager(address, images)
        test_classifications_agree_with_eager(address, images)
