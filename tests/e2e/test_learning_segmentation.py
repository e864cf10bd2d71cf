"""Learning is real: each quickstart segmenter reaches mIoU >= 0.85 on held-out images. Slow."""

from __future__ import annotations

import time

import pytest

from models import checkpoints
from models.evaluation import evaluate_segmenter
from models.seg_datasets import SegmentationDataset
from models.train.detection import QUICKSTART_SPLITS
from models.train.segmentation import QUICKSTART_SEGMENTERS, quickstart_config, train_segmentation


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("arch", sorted(QUICKSTART_SEGMENTERS))
def test_quickstart_segmenter_reaches_miou_on_held_out_images(request, quickstart_data, tmp_path, arch, capsys):
    data = quickstart_data
    if arch == "unet":  # trained once for this test and the captioner's (which starts from its encoder)
        result, minutes = request.getfixturevalue("quickstart_unet")
    else:
        started = time.perf_counter()
        result = train_segmentation(quickstart_config(data, tmp_path, arch=arch, progress=False))
        minutes = (time.perf_counter() - started) / 60
    model, config = checkpoints.load_model(result.model_dir)
    test = SegmentationDataset(data / "images" / "test", data / "masks" / "test", class_names=config.classes)
    report = evaluate_segmenter(
        model, test, mean=config.normalization["mean"], std=config.normalization["std"], progress=False
    )
    with capsys.disabled():
        print(
            f"\nquickstart {arch}: held-out mIoU {report.miou:.3f}, pixel accuracy {report.pixel_accuracy:.3f}, "
            f"per-class IoU { {k: round(v, 3) for k, v in report.iou.items()} }, trained in {minutes:.1f} min"
        )
    assert len(test) == QUICKSTART_SPLITS["test"]
    assert report.miou >= 0.85
