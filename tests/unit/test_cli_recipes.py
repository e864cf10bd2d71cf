"""`cvtasks train generation --quickstart`: its help names the recipe's flags, and flags the user gives win."""

from __future__ import annotations

import pytest

from models.train.generation import QUICKSTART_RECIPE, GenerationTrainConfig
from services.cli import build_parser
from services.commands.train import as_flags, under_recipe

COMMAND = ["train", "generation"]


def test_the_quickstart_help_lists_the_recipe_as_flags_that_exist(capsys):
    with pytest.raises(SystemExit):
        build_parser(COMMAND).parse_args([*COMMAND, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert as_flags(QUICKSTART_RECIPE) in help_text
    for key in QUICKSTART_RECIPE:
        assert f"[--{key.replace('_', '-')} " in help_text, key  # a flag of its own in the usage line
    assert (
        as_flags({"batch_size": 16, "augment": "translation,color"}) == "--batch-size 16, --augment translation,color"
    )


def test_flags_given_explicitly_win_over_the_recipe():
    args = build_parser(COMMAND).parse_args([*COMMAND, "--images", "x", "--quickstart", "--epochs", "5"])
    settings = under_recipe(
        {"epochs": args.epochs, "ngf": args.ngf, "lr": args.lr}, GenerationTrainConfig, QUICKSTART_RECIPE
    )
    assert settings == {"epochs": 5, "ngf": QUICKSTART_RECIPE["ngf"], "lr": GenerationTrainConfig.lr}


def test_the_classification_quickstart_names_its_own_flags_and_given_flags_win(capsys):
    from models.train.classification import QUICKSTART_RECIPE as RECIPE
    from models.train.classification import ClassificationTrainConfig

    command = ["train", "classification"]
    with pytest.raises(SystemExit):
        build_parser(command).parse_args([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--arch classifier_tiny, --image-size 64" in help_text and "[--arch ARCHITECTURE]" in help_text
    args = build_parser(command).parse_args([*command, "--data", "x", "--quickstart", "--epochs", "3"])
    settings = under_recipe(
        {"epochs": args.epochs, "architecture": args.architecture, "lr": args.lr}, ClassificationTrainConfig, RECIPE
    )
    assert settings == {"epochs": 3, "architecture": "classifier_tiny", "lr": RECIPE["lr"]}
