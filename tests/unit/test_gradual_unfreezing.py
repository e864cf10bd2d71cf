"""Gradual unfreezing (``unfreeze_every``): the backbone starts frozen and one more stage, from the
top, trains every N epochs, through the one training loop; the flag comes from the config."""

from __future__ import annotations

import pytest
import torch

from models.classification import backbone_stages
from models.synth import generate_classification
from models.train import loop
from models.train.classification import ClassificationTask, ClassificationTrainConfig, unfrozen_stages


def test_the_schedule_adds_one_stage_every_n_epochs_up_to_the_final_count():
    assert [unfrozen_stages(e, 2, 3) for e in range(1, 11)] == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert [unfrozen_stages(e, 1, 2) for e in range(1, 5)] == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="frozen never unfreezes"):
        ClassificationTrainConfig(train_images="x", val_images="x", transfer="frozen", unfreeze_every=1)


class _Recording(ClassificationTask):
    """The task, noting which parameters train and which modules are in train mode each epoch."""

    def __init__(self, cfg: ClassificationTrainConfig) -> None:
        super().__init__(cfg)
        self.trainable: list[set[str]] = []
        self.training: list[set[str]] = []

    def build(self, device, rank):
        data = super().build(device, rank)
        self.start = {k: v.clone() for k, v in self.model.state_dict().items()}
        return data

    def step(self, batch, run):
        if run.step == 1:  # after the loop put the modules in train mode
            self.trainable.append({n for n, p in self.model.named_parameters() if p.requires_grad})
            self.training.append({n for n, m in self.model.named_modules() if m.training})
        return super().step(batch, run)


def test_the_trainable_parameters_grow_on_schedule_and_frozen_stages_do_not_change(tmp_path):
    generate_classification(tmp_path / "data", splits={"train": 24, "val": 6}, image_size=32, seed=0)
    cfg = ClassificationTrainConfig(
        train_images=str(tmp_path / "data" / "images" / "train"),
        val_images=str(tmp_path / "data" / "images" / "val"),
        run_dir=str(tmp_path / "run"),
        model_store=str(tmp_path / "store"),
        architecture="classifier_tiny",
        model_args={"widths": [8, 16, 32]},  # 3 backbone stages: features.0, .1, .2
        image_size=32,
        epochs=5,
        batch_size=8,
        warmup_steps=1,
        unfreeze_every=2,
        transfer="last",
        trainable_stages=2,
        progress=False,
    )
    task = _Recording(cfg)
    loop.fit(task, loop.Settings.of(cfg))
    stages = [f"features.{i}." for i in range(3)]
    assert len(backbone_stages(task.model, "classifier_tiny")) == 3

    def prefixes(names: set[str]) -> list[str]:
        return [s for s in stages if any(n.startswith(s) for n in names)]

    assert [prefixes(t) for t in task.trainable] == [[], [], [stages[2]], [stages[2]], stages[1:]]
    assert all({"fc.weight", "fc.bias"} <= t for t in task.trainable)  # the head always trains
    assert [prefixes(t) for t in task.training] == [[], [], [stages[2]], [stages[2]], stages[1:]]
    end = task.model.state_dict()
    changed = {k.split(".")[1] for k in end if k.startswith("features.") and not torch.equal(end[k], task.start[k])}
    assert changed == {"1", "2"}  # features.0 never trained (batch-norm statistics included)


def test_the_flag_is_derived_from_the_config():
    import argparse

    from services.commands.flags import add_config_flags

    parser = argparse.ArgumentParser()
    add_config_flags(parser, ClassificationTrainConfig)
    assert "--unfreeze-every" in parser.format_help()
