"""Classification data and metrics: ImageFolder and CSV loaders, the synthetic variant and its two
domains, the weighted sampler, and the evaluation report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from models.class_datasets import ClassificationDataset, csv_labels, image_folder, load_items, read_class_list
from models.errors import DatasetError
from models.evaluation import ClassificationReport, evaluate_classifier
from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, classification_train_transform, read_image
from models.synth import CLASSES, generate_classification


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls-data")
    generate_classification(root / "source", splits={"train": 30, "val": 6}, image_size=64, seed=3)
    generate_classification(root / "target", splits={"train": 30}, image_size=64, seed=3, domain="target")
    return root


def test_synth_writes_one_folder_per_class_the_same_for_the_same_seed(folder, tmp_path):
    classes, items = image_folder(folder / "source" / "images" / "train")
    assert classes == CLASSES and len(items) == 30 and {label for _, label in items} == {0, 1, 2}
    assert read_class_list(folder / "source" / "classes.txt") == CLASSES
    again = generate_classification(tmp_path, splits={"train": 30, "val": 6}, image_size=64, seed=3)
    assert sum(again["train"].values()) == 30
    first = sorted((folder / "source" / "images" / "train").rglob("*.png"))
    second = sorted((tmp_path / "images" / "train").rglob("*.png"))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_the_target_domain_looks_different_from_the_source(folder):
    def brightness(domain: str) -> float:
        return float(np.mean([read_image(p).mean() for p in (folder / domain / "images" / "train").rglob("*.png")]))

    assert brightness("target") > brightness("source") + 50
    assert image_folder(folder / "target" / "images" / "train")[0] == CLASSES


def test_image_folder_refuses_unknown_or_missing_classes(folder, tmp_path):
    with pytest.raises(DatasetError, match="not among the classes"):
        image_folder(folder / "source" / "images" / "train", classes=("circle", "square"))
    with pytest.raises(DatasetError, match="no class sub-folders"):
        image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        image_folder(tmp_path / "nowhere")


def test_csv_labels_relative_to_the_images_folder_and_bad_rows_named(folder, tmp_path):
    images = folder / "source" / "images" / "train"
    paths = sorted(images.rglob("*.png"))[:4]
    rows = [f"{p.relative_to(images)},{p.parent.name}" for p in paths]
    (tmp_path / "labels.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    classes, items = load_items(images, tmp_path / "labels.csv")
    assert classes == tuple(sorted({p.parent.name for p in paths})) and [p for p, _ in items] == paths
    (tmp_path / "bad.csv").write_text(f"image,label\n{rows[0]}\n{rows[1].split(',')[0]},hexagon\n")
    with pytest.raises(DatasetError, match="line 3: label `hexagon`"):
        csv_labels(tmp_path / "bad.csv", images, classes=CLASSES)
    (tmp_path / "missing.csv").write_text("image,label\nnope.png,circle\n")
    with pytest.raises(DatasetError, match="nope.png does not exist"):
        csv_labels(tmp_path / "missing.csv", images)
    (tmp_path / "header.csv").write_text("file,class\na.png,circle\n")
    with pytest.raises(DatasetError, match="`image` and `label` columns"):
        csv_labels(tmp_path / "header.csv", images)


def test_the_dataset_gives_normalised_inputs_of_the_size_augmented_or_not(folder):
    classes, items = image_folder(folder / "source" / "images" / "train")
    plain = ClassificationDataset(items, classes, size=48, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    augmented = ClassificationDataset(
        items,
        classes,
        size=48,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        transform=classification_train_transform(size=48, seed=0),
    )
    for dataset in (plain, augmented):
        image, label = dataset[0]
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and label.item() == items[0][1]
    assert not torch.equal(plain[0][0], augmented[0][0])


def test_a_weighted_sampler_balances_the_classes():
    from models.train.classification import class_weights

    labels = [0] * 90 + [1] * 10
    weights = class_weights(np.bincount(labels))[labels]
    sampler = torch.utils.data.WeightedRandomSampler(weights.double(), num_samples=4000, replacement=True)
    torch.manual_seed(0)
    drawn = np.bincount([labels[i] for i in sampler])
    assert abs(drawn[0] - drawn[1]) < 400


def test_the_report_has_precision_recall_f1_and_accuracies():
    confusion = np.array([[8, 2, 0], [1, 4, 0], [0, 0, 5]])
    report = ClassificationReport.of(confusion, top5_hits=19, class_names=("a", "b", "c"))
    assert report.top1 == pytest.approx(17 / 20) and report.top5 == pytest.approx(19 / 20)
    assert report.precision["a"] == pytest.approx(8 / 9) and report.recall["a"] == pytest.approx(8 / 10)
    assert report.f1["b"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5)) and report.f1["c"] == 1.0
    assert "true \\ pred" in report.confusion_text() and report.to_json()["images"] == 20


class _Fixed(Dataset):
    class_names = tuple("abcdefg")

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return torch.full((1,), float(i)), torch.tensor([0, 1, 6, 3][i])


class _Ranker(torch.nn.Module):
    """Class 0 most probable, then 1, 2, ... for every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.arange(7.0).expand(len(x), 7) + 0 * x


def test_evaluate_classifier_counts_top1_top5_and_the_confusion():
    report = evaluate_classifier(_Ranker(), _Fixed(), batch_size=3, progress=False)
    assert report.top1 == 0.25 and report.top5 == 0.75  # labels 0 (top 1), 1 and 3 (top 5), 6 (neither)
    assert report.confusion[:, 0].tolist() == [1, 1, 0, 1, 0, 0, 1]


def test_synth_masks_cover_each_shape_and_the_multi_label_variant_writes_its_csv(tmp_path):
    generate_classification(tmp_path / "m", splits={"train": 6}, image_size=64, seed=1, masks=True)
    images = sorted((tmp_path / "m" / "images" / "train").rglob("*.png"))
    for path in images:
        mask = read_image(tmp_path / "m" / "masks" / "train" / path.relative_to(tmp_path / "m" / "images" / "train"))
        share = (mask[..., 0] > 127).mean()
        assert 0.05 < share < 0.6  # one shape of side 35..75 % of the image
    summary = generate_classification(tmp_path / "ml", splits={"train": 20}, image_size=64, seed=1, multi_label=True)
    classes, items = csv_labels(
        tmp_path / "ml" / "labels" / "train.csv", tmp_path / "ml" / "images" / "train", multi_label=True
    )
    assert len(items) == 20 and all(1 <= len(ids) <= 3 for _, ids in items) and set(classes) <= set(CLASSES)
    assert any(len(ids) > 1 for _, ids in items)
    assert sum(summary["train"].values()) == sum(len(ids) for _, ids in items)
    with pytest.raises(DatasetError, match="CSV"):
        load_items(tmp_path / "ml" / "images" / "train", None, multi_label=True)
