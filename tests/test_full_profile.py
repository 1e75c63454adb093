"""The full profile's code path on the CPU: every full recipe of an image method trains 2 steps on small fake
CIFAR-10 / STL-10 files in their real on-disk format (ResNet-18 included), then evaluates and writes its run folder;
the dense methods' full recipes do the same on a few generated images at their full-profile size and networks.

The GPU regime cannot be run here, but its recipes, data loaders, encoders and evaluation can: this
keeps them from rotting unseen. Only the batch size (16) and the budget (2 steps) are changed.
"""

import json

import pytest
import torch

from clcourse.device import torch_threads
from clcourse.recipes import DENSE_METHODS, IMAGE_METHODS, get_recipe
from clcourse.runs import train_run
from fake_datasets import accept_fake_cifar10, accept_fake_stl10, write_fake_cifar10, write_fake_stl10


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_fake_cifar10(root, per_batch=8)  # 40 training and 8 test images
    write_fake_stl10(root, sizes=(("train", 16), ("test", 8), ("unlabeled", 16)))
    return root


@pytest.mark.parametrize("dataset, encoder", [("cifar10", "resnet18_cifar"), ("stl10", "resnet18")])
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_full_recipe_trains_two_steps_and_evaluates(method, dataset, encoder, fake_root, tmp_path, monkeypatch):
    accept_fake_cifar10(fake_root, monkeypatch)
    accept_fake_stl10(fake_root, monkeypatch)
    full = get_recipe(method, "full", dataset)
    assert full.encoder == encoder and full.epochs is not None
    recipe = full.override(steps=2, batch_size=16, probe_draws=1)
    torch.manual_seed(0)
    metrics = train_run(recipe, tmp_path / "run", torch.device("cpu"), root=fake_root, log=lambda *_: None)

    assert metrics["steps"] == 2 and metrics["feature_dim"] == 512  # a ResNet-18 was trained
    assert metrics["config"]["encoder"] == encoder and metrics["config"]["image_size"] == (32 if dataset == "cifar10"
                                                                                         else 96)
    assert all(0.0 <= p["mean"] <= 1.0 for p in metrics["linear_probe"].values())
    assert metrics["knn"]["k"] == 200  # the full protocol, capped by the tiny training set inside
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["config"]["lr"] == pytest.approx(full.lr * 16 / 512 if full.lr_scaling == "linear" else full.lr)
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_every_full_dense_recipe_trains_two_steps_and_evaluates(method, tmp_path):
    full = get_recipe(method, "full")
    assert full.steps is not None and full.train_size == 20000
    small = dict(train_size=16, test_size=4, batch_size=8, steps=2)
    if method == "pcrl":
        small.update(finetune_size=8, finetune_steps=2, finetune_batch_size=4)
    torch.manual_seed(0)
    with torch_threads(1):
        metrics = train_run(full.override(**small), tmp_path / "run", torch.device("cpu"), log=lambda *_: None)
    assert metrics["steps"] == 2 and metrics["config"]["image_size"] == full.image_size == 64
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["test_images"] == 4
    assert metrics["config"]["encoder_options"] == full.encoder_options
    assert (tmp_path / "run" / "last.pt").is_file()
