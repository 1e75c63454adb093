"""``train_run`` of the dense methods end to end on small generated data: training, the segmentation
protocols, metrics.json and the report; and ``embed_run`` refusing their runs."""

import json

import pytest
import torch

from clcourse.device import torch_threads
from clcourse.recipes import get_recipe
from clcourse.runs import embed_run, report, train_run


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks: on a busy 2-core machine a second thread costs more than it saves."""
    with torch_threads(1):
        yield


def run(recipe, out):
    torch.manual_seed(0)
    return train_run(recipe, out, torch.device("cpu"), log=lambda *_: None)


def test_pixel_contrast_trains_and_reports_the_miou_of_its_segmentation(tmp_path):
    recipe = get_recipe("pixel-contrast", "quick").override(train_size=48, test_size=16, batch_size=16, steps=3)
    metrics = run(recipe, tmp_path / "run")
    assert (metrics["method"], metrics["dataset"], metrics["steps"], metrics["epochs"]) == (
        "pixel-contrast", "scenes", 3, 1)
    assert 0 <= metrics["mean_iou"] <= 1 and metrics["num_classes"] == 7 and metrics["test_images"] == 16
    assert list(metrics["iou_per_class"]) == ["background", "circle", "square", "triangle", "star", "cross", "heart"]
    assert metrics["images_per_second"] == pytest.approx(3 * 16 / metrics["train_seconds"])  # one view per image
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["config"]["evaluation"] == "segmentation" and saved["mean_iou"] == metrics["mean_iou"]
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())["step_loss"]) == 3
    printed = report(saved)
    assert "mIoU" in printed and "IoU per class  background" in printed and "about 84%" in printed
    assert run(recipe, tmp_path / "again")["mean_iou"] == metrics["mean_iou"]  # deterministic given the seed

    with pytest.raises(ValueError, match="pixel-contrast run, a dense method: clcourse embed exports"):
        embed_run(tmp_path / "run", tmp_path / "h.npy")


def test_pcrl_pre_trains_then_fine_tunes_and_reports_the_lesion_dice(tmp_path):
    recipe = get_recipe("pcrl", "quick").override(image_size=32, train_size=32, test_size=8, finetune_size=8,
                                                   finetune_steps=2, finetune_batch_size=4, batch_size=16, steps=2)
    metrics = run(recipe, tmp_path / "run")
    assert (metrics["method"], metrics["dataset"], metrics["steps"]) == ("pcrl", "lesions", 2)
    assert set(metrics["dice"]) == {"lesion"} and 0 <= metrics["dice"]["lesion"] <= 1
    assert metrics["finetune"]["steps"] == 2 and metrics["finetune"]["labelled_images"] == 8
    assert metrics["finetune"]["class_weights"] == [1.0, 10.0] and metrics["test_images"] == 8
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["config"]["finetune_steps"] == 2 and (tmp_path / "run" / "last.pt").is_file()
    rows = dict(line.split(None, 1) for line in report(saved).splitlines() if not line.startswith("IoU"))
    assert rows["fine-tuned"].startswith("2 steps on 8 labelled images") and rows["Dice"].startswith("lesion ")
    assert rows["mIoU"].endswith("over 2 classes (8 test images)")
    with pytest.raises(ValueError, match="pcrl run, a dense method"):
        embed_run(tmp_path / "run", tmp_path / "h.csv")
