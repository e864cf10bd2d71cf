"""models/classification.py and the transfer modes of models/train/classification.py: builders,
backbone stages and head, local backbone weights, freezing, discriminative lrs, the task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import checkpoints, classification
from models.classification import (
    CLASSIFICATION,
    Classification,
    backbone_stages,
    build_classifier,
    head_of,
    load_backbone,
)
from models.errors import InvalidInputError, UnknownModelError
from models.options import ClassifyOptions
from models.train import common
from models.train.classification import KeepFrozenInEval, apply_transfer, class_weights, parameter_groups

ARCHITECTURES = [*classification.architectures(), "tu-resnet18", "tu-mobilenetv3_small_100", "tu-convnext_atto"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_offline_with_a_head_for_the_classes_and_stages_cover_the_rest(arch):
    model = build_classifier(arch, num_classes=7)
    head = head_of(model, arch)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 7
    stages = backbone_stages(model, arch)
    counted = sum(p.numel() for s in [head, *stages] for p in s.parameters())
    assert len(stages) >= 4 and counted == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["classifier_tiny", "resnet18", "mobilenet_v3_small", "tu-resnet18"])
def test_logits_have_one_column_per_class(arch):
    model = build_classifier(arch, num_classes=3).eval()
    with torch.inference_mode():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownModelError, match="resnet18"):
        build_classifier("resnet19", num_classes=3)
    with pytest.raises(InvalidInputError, match="timm"):
        build_classifier("tu-no_such_net", num_classes=3)


def test_a_torchvision_state_dict_file_initialises_the_backbone_and_the_head_stays_new(tmp_path):
    torch.manual_seed(1)
    source = build_classifier("mobilenet_v3_small", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "mnv3.pth")
    model = build_classifier("mobilenet_v3_small", num_classes=3, backbone_weights_path=tmp_path / "mnv3.pth")
    assert torch.equal(model.features[0][0].weight, source.features[0][0].weight)
    assert torch.equal(model.classifier[0].weight, source.classifier[0].weight)  # the pre-logits layer too
    assert model.classifier[3].out_features == 3
    torch.save({"something.else": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_backbone(model, "mobilenet_v3_small", tmp_path / "other.pth")
    with pytest.raises(InvalidInputError, match="ResNet classifiers"):
        load_backbone(model, "mobilenet_v3_small", tmp_path)


def test_a_stored_unets_encoder_or_captioners_trunk_becomes_a_resnet_backbone(
    segmenter_store, captioner_store, tmp_path
):
    from models.segmentation import build_segmenter

    torch.manual_seed(2)
    unet = build_segmenter("unet", num_classes=4, encoder="resnet18", encoder_depth=3, decoder_channels=[32, 16, 8])
    config = checkpoints.ModelConfig(
        name="unet18",
        task="segmentation",
        architecture="unet",
        classes=("background", "a", "b", "c"),
        model_args={"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    )
    checkpoints.save_model(unet, config, tmp_path / "unet18")
    model = build_classifier("resnet18", num_classes=3, backbone_weights_path=tmp_path / "unet18")
    assert torch.equal(model.conv1.weight, unet.encoder.conv1.weight)
    assert torch.equal(model.layer1[0].conv1.weight, unet.encoder.layer1[0].conv1.weight)

    captioner, _ = checkpoints.load_model(captioner_store / "tiny-captioner")
    model = build_classifier("resnet18", num_classes=3, backbone_weights_path=captioner_store / "tiny-captioner")
    assert torch.equal(model.conv1.weight, captioner.encoder.trunk[0].weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, captioner.encoder.trunk[7][1].bn2.running_mean)


def _trainable(model, arch):
    return [any(p.requires_grad for p in s.parameters()) for s in backbone_stages(model, arch)]


def test_transfer_modes_freeze_what_they_say():
    model = build_classifier("resnet18", num_classes=3)
    frozen = apply_transfer(model, "resnet18", "frozen")
    assert _trainable(model, "resnet18") == [False] * 5 and len(frozen) == 5
    assert all(p.requires_grad for p in model.fc.parameters())
    apply_transfer(model, "resnet18", "last", trainable_stages=2)
    assert _trainable(model, "resnet18") == [False, False, False, True, True]
    assert apply_transfer(model, "resnet18", "full") == [] and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="5 backbone stages"):
        apply_transfer(model, "resnet18", "last", trainable_stages=6)


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics_while_the_head_learns():
    torch.manual_seed(0)
    model = build_classifier("classifier_tiny", num_classes=3, widths=[8, 16])
    frozen = apply_transfer(model, "classifier_tiny", "frozen")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = KeepFrozenInEval(model, frozen).train()
    groups = parameter_groups(model, "classifier_tiny", 1.0)
    optimizer = common.build_optimizer(groups, name="adamw", lr=0.01, weight_decay=0.0)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(trained(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # running_mean/var of the frozen stages included


def test_discriminative_learning_rates_give_the_backbone_its_scaled_lr():
    model = build_classifier("classifier_tiny", num_classes=3)
    optimizer = common.build_optimizer(
        parameter_groups(model, "classifier_tiny", 0.1), name="sgd", lr=0.5, weight_decay=0.0
    )
    head, backbone = optimizer.param_groups
    assert head["lr"] == pytest.approx(0.5) and backbone["lr"] == pytest.approx(0.05)
    assert len(head["params"]) == 2 and len(backbone["params"]) == len(list(model.parameters())) - 2
    apply_transfer(model, "classifier_tiny", "frozen")  # a frozen backbone's group is left out
    optimizer = common.build_optimizer(
        parameter_groups(model, "classifier_tiny", 0.1), name="adamw", lr=0.5, weight_decay=0.0
    )
    assert len(optimizer.param_groups) == 1


def test_class_weights_are_inverse_frequencies_with_mean_one():
    weights = class_weights(np.array([10, 30, 0, 60]))
    assert weights[2] == 0 and weights[0] / weights[1] == pytest.approx(3.0)
    assert weights[[0, 1, 3]].mean() == pytest.approx(1.0)


def _config(input_size: int = 32) -> checkpoints.ModelConfig:
    return checkpoints.ModelConfig(
        name="c", task="classification", architecture="classifier_tiny", classes=("a", "b", "c"), input_size=input_size
    )


def test_the_task_answers_the_top_k_best_first_capped_at_the_classes_and_filtered():
    config = _config()
    torch.manual_seed(0)
    model = CLASSIFICATION.build_model(config).eval()
    rgb = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    x = CLASSIFICATION.model_input(rgb, config)
    assert x.shape == (3, 32, 32)
    options = [ClassifyOptions(top_k=2), ClassifyOptions(top_k=10), ClassifyOptions(min_probability=0.99)]
    two, every, none = (c.labels for c in CLASSIFICATION.run_batch(model, config, [x, x, x], options))
    assert len(two) == 2 and [label.class_name for label in every[:2]] == [label.class_name for label in two]
    assert sorted(label.class_name for label in every) == ["a", "b", "c"]
    assert sum(label.probability for label in every) == pytest.approx(1.0, abs=1e-5)
    assert every[0].probability >= every[1].probability >= every[2].probability and none == []
    row = CLASSIFICATION.to_row(Classification(two), config, options[0])
    assert [r["class"] for r in row["labels"]] == [label.class_name for label in two]
    with pytest.raises(InvalidInputError, match="top_k"):
        CLASSIFICATION.options(config, {"top_k": 0})


def test_pulled_imagenet_weights_are_found_in_the_hub_cache_and_start_a_backbone(tmp_path, monkeypatch):
    """`cvtasks weights pull resnet18` stores torchvision's file in torch.hub's cache; without a
    network here the file is written as the download would name it, from a random resnet18."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert classification.imagenet_weights_file("resnet18") is None  # nothing downloaded, nothing found
    imagenet = build_classifier("resnet18", num_classes=1000)
    url = classification._imagenet("resnet18").url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cached)
    assert classification.imagenet_weights_file("resnet18") == cached
    model = build_classifier("resnet18", num_classes=3)
    load_backbone(model, "resnet18", cached)  # the 1000-class head is left out
    assert torch.equal(model.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert head_of(model, "resnet18").out_features == 3
    assert "resnet18" in classification.imagenet_architectures()
    with pytest.raises(InvalidInputError, match="no torchvision ImageNet weights"):
        classification.imagenet_weights_file("classifier_tiny")
