"""The checks of a stored model folder (models.store_checks via models.checkpoints): names, config
fields, weights against the config, a broken folder skipped by listings, and the batch CLI on a
store that holds one."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import pytest
import torch

from models import checkpoints
from models.errors import InvalidInputError, ModelStoreError, UnknownModelError
from models.generation import Generator
from models.store_checks import MAX_CONFIG_BYTES, check_name, check_weights

ARGS = {"image_size": 32, "channels": 1, "nz": 8, "ngf": 4}


@pytest.fixture()
def store(tmp_path):
    config = checkpoints.ModelConfig(
        name="gen", task="generation", architecture="dcgan", classes=(), model_args=ARGS, input_size=32
    )
    checkpoints.save_model(Generator(**ARGS).eval(), config, tmp_path / "gen")
    return tmp_path


def _broken(store, name="broken", text="[]"):
    shutil.copytree(store / "gen", store / name)
    (store / name / "config.json").write_text(text)
    return store / name


@pytest.mark.parametrize("name", ["tiny-detector", "fasterrcnn_resnet50_fpn_v2", "v1.2", "_x", "a" * 128])
def test_plain_folder_names_are_model_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name, words",
    [
        ("", "non-empty"),
        ("a" * 129, "too long"),
        ("a/b", "plain folder"),
        ("..", "plain folder"),
        (".hidden", "plain folder"),
        ("-x", "plain"),
        ("a\x00b", "plain folder"),
        ("é", "plain folder"),
        (3, "string"),
    ],
)
def test_other_names_are_refused_saying_why(name, words):
    with pytest.raises(InvalidInputError, match=words):
        check_name(name)


def test_a_config_naming_no_folder_is_refused_when_written():
    with pytest.raises(ValueError, match="plain folder name"):
        checkpoints.ModelConfig(name="../up", task="generation", architecture="dcgan", classes=())


@pytest.mark.parametrize(
    "change, words",
    [
        ({"task": 3}, "`task` must be a string"),
        ({"input_size": -2}, "`input_size` must be an integer"),
        ({"normalization": {"mean": [0.5], "std": [0]}}, "`normalization` must be"),
        ({"metrics": {"AP": "high"}}, "`metrics` must be an object of numbers"),
        ({"version": 2}, "`version` must be a string"),
        ({"format_version": "1"}, "`format_version` must be a positive integer"),
        ({"model_args": {**ARGS, "widths": list(range(65))}}, "has 65 items"),
        ({"model_args": {**ARGS, "decoder": {"sizes": [4, -1]}}}, "`model_args.decoder.sizes[1]` is -1"),
        ({"name": "x" * 200}, "too long"),
    ],
)
def test_each_wrong_field_is_named(store, change, words):
    config = {**json.loads((store / "gen" / "config.json").read_text()), **change}
    folder = _broken(store, text=json.dumps(config))
    with pytest.raises(ModelStoreError, match=re.escape(words)) as err:
        checkpoints.load_config(folder)
    assert str(err.value).startswith("broken/config.json: ") and str(store) not in str(err.value)


def test_a_missing_field_and_an_oversized_config_are_refused(store):
    with pytest.raises(ModelStoreError, match="`architecture`, `classes` missing"):
        checkpoints.load_config(_broken(store, "partial", json.dumps({"name": "partial", "task": "generation"})))
    huge = _broken(store, "huge")
    os.truncate(huge / "config.json", MAX_CONFIG_BYTES + 1)  # sparse: nothing is written, nor read
    with pytest.raises(ModelStoreError, match="more than a config may be"):
        checkpoints.load_config(huge)


def test_a_folder_without_config_is_no_model_and_says_so_without_its_path(store):
    (store / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="no model in folder `empty`") as err:
        checkpoints.load_config(store / "empty")
    assert str(store) not in str(err.value)
    assert checkpoints.find(store, "empty") is None and checkpoints.find(store, "gen") == store / "gen"


def test_listing_skips_a_broken_folder_and_logs_it_once(store, caplog):
    _broken(store)
    with caplog.at_level(logging.WARNING, logger="cvtasks.store"):
        assert [c.name for c in checkpoints.list_store(store)] == ["gen"]
        assert [c.name for c in checkpoints.list_store(store)] == ["gen"]
    reports = [r.getMessage() for r in caplog.records if "broken" in r.getMessage()]
    assert len(reports) == 1 and "broken/config.json: must hold a JSON object" in reports[0]
    with pytest.raises(UnknownModelError, match=r"Available models: \['gen'\]"):
        checkpoints.resolve(store, "nope")
    with pytest.raises(ModelStoreError, match="broken/config.json"):
        checkpoints.resolve(store, "broken")


def test_weights_are_compared_with_the_config_by_name_and_shape(store):
    expected = {k: tuple(v.shape) for k, v in Generator(**ARGS).state_dict().items()}
    check_weights(store / "gen" / "model.safetensors", expected)
    changed = {**{k: v for k, v in expected.items() if k != "net.0.weight"}, "extra.weight": (2,), "net.1.weight": (5,)}
    with pytest.raises(ValueError) as err:
        check_weights(store / "gen" / "model.safetensors", changed)
    assert all(
        words in str(err.value)
        for words in (
            "1 weights missing from the file (e.g. extra.weight)",
            "1 in the file but not in the model (e.g. net.0.weight)",
            "net.1.weight: file [16], model [5]",
        )
    )


def test_a_sound_folder_still_loads_the_same_weights(store):
    model, config = checkpoints.load_model(store / "gen")
    saved = Generator(**ARGS)
    saved.load_state_dict(dict(model.state_dict()))
    z = torch.randn(2, 8)
    assert config.name == "gen" and not model.training and torch.equal(model(z), saved.eval()(z))
    assert all(not t.is_meta for t in model.state_dict().values())
    assert torch.zeros(1).device.type == "cpu"  # the meta-device build left the default device alone


def test_counts_that_would_build_huge_modules_are_bounded():
    from models.captioning import CaptionDecoder
    from models.generation import LatentPrior

    with pytest.raises(ValueError, match="num_layers must be in 1..8"):
        CaptionDecoder(vocab_size=8, num_layers=10**6)
    with pytest.raises(ValueError, match="up to 1024"):
        LatentPrior(nz=8, components=10**9)


def test_the_batch_cli_skips_a_broken_folder_and_names_it_when_asked_for(store, tmp_path, capsys):
    from services.cli import main

    _broken(store, "a-broken")  # sorted before `gen`: the default model must skip it
    common = ["batch", "generate", "--count", "2", "--model-store", str(store), "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out" / "images").rglob("*.png"))) == 2
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "out2"), "--model", "a-broken"]) == 2
    error = capsys.readouterr().err
    assert "a-broken/config.json: must hold a JSON object" in error and str(store) not in error
