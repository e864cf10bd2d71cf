"""`cvtasks export`: stored models as ONNX (run by onnxruntime) and TorchScript, checked against
the PyTorch model on inputs of two batch sizes and two image sizes (models/export.py)."""

from __future__ import annotations

import json

import pytest
import torch

from models import checkpoints
from models.errors import InvalidInputError
from models.export import EXPORTABLE, TOLERANCES, ExportError, check_parity, export_model, load_export, load_runner
from services.cli import main

STORES = {
    "classification": ("classifier_store", "tiny-classifier"),
    "segmentation": ("segmenter_store", "tiny-segmenter"),
    "generation": ("generator_store", "tiny-generator"),
}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("task", sorted(STORES))
def test_an_export_agrees_with_its_model_at_other_batch_sizes_and_image_sizes(request, tmp_path, task, fmt):
    fixture, name = STORES[task]
    store = request.getfixturevalue(fixture)
    folder, parity = export_model(store / name, fmt, tmp_path / "out")
    assert all(parity[k] <= TOLERANCES[k] for k in parity)
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == task and config["extra"]["export"]["format"] == fmt
    # the folder is a model-store folder still: it loads and serves as the model it came from
    model, loaded = checkpoints.load_model(folder)
    assert loaded.name == name
    # an input the parity check did not use: a batch of 5 (and, for images, another size)
    spec = EXPORTABLE[task]
    side = spec.sizes(loaded)[1] + 32 if task != "generation" else 1
    x = spec.sample(loaded, 5, side)
    with torch.no_grad():
        ours = spec.module(model)(x)
    theirs = load_runner(folder / config["extra"]["export"]["file"], fmt)(x)
    assert theirs.shape == ours.shape
    assert all(v <= TOLERANCES[k] for k, v in spec.agreement(ours, theirs).items())


def test_an_export_that_disagrees_is_refused_and_not_left_behind(classifier_store, tmp_path, monkeypatch):
    model, config = checkpoints.load_model(classifier_store / "tiny-classifier")
    spec = EXPORTABLE["classification"]
    with pytest.raises(ExportError, match="top1_disagreement .* > 0"):
        check_parity(model, lambda x: -model(x), spec, config)  # a runner whose answers are wrong
    monkeypatch.setattr("models.export.load_runner", lambda path, fmt: lambda x: -model(x))
    with pytest.raises(ExportError, match="disagrees with the PyTorch model"):
        export_model(classifier_store / "tiny-classifier", "onnx", tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists() and not (tmp_path / "out" / "config.json").exists()


def test_unknown_formats_folders_without_an_export_and_empty_sample_folders_say_what_to_do(
    classifier_store, captioner_store, tmp_path
):
    with pytest.raises(InvalidInputError, match="onnx, torchscript"):
        export_model(classifier_store / "tiny-classifier", "tensorrt", tmp_path / "x")
    with pytest.raises(InvalidInputError, match="no export .* run `cvtasks export`"):
        load_export(classifier_store / "tiny-classifier")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="--samples .*: no images"):
        export_model(captioner_store / "tiny-captioner", "onnx", tmp_path / "y", samples=tmp_path / "empty")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_command_exports_and_prints_the_parity(classifier_store, tmp_path, capsys):
    out = tmp_path / "exported"
    code = main(
        ["export", "tiny-classifier", "--model-store", str(classifier_store), "--format", "onnx", "--out", str(out)]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == "onnx" and printed["parity"]["top1_disagreement"] == 0.0
    assert (out / "model.onnx").is_file() and (out / "model.safetensors").is_file()
    # what runs the export, also from a config.json written before the parts were recorded
    model, _ = checkpoints.load_model(out)
    x = torch.rand(2, 3, 64, 64)
    for strip in (False, True):
        if strip:
            stored = json.loads((out / "config.json").read_text())
            del stored["extra"]["export"]["parts"]
            (out / "config.json").write_text(json.dumps(stored))
        config, run = load_export(out)
        assert config.name == "tiny-classifier" and torch.equal(run(x).argmax(1), model(x).argmax(1))
    assert (
        main(["export", "no-such-model", "--model-store", str(classifier_store), "--format", "onnx", "--out", str(out)])
        != 0
    )
