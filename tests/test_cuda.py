"""The package on a CUDA GPU: same numbers as on the CPU, and every method trains under autocast.

Skipped without a GPU (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

import math

import pytest
import torch

from clcourse.augment import BatchedAugment
from clcourse.data import ViewLoader, load_digits
from clcourse.encoders import SmallCNN
from clcourse.losses import info_nce, nt_xent, supcon
from clcourse.methods import MoCo, SimCLR, SupCon
from clcourse.train import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_losses_and_gradients_match_the_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    z1, z2, queue = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g), torch.randn(256, 32, generator=g)
    labels = torch.randint(0, 5, (64,), generator=g)
    losses = {
        "nt_xent": lambda a, b, q: nt_xent(a, b, 0.1),
        "info_nce": lambda a, b, q: info_nce(a, b, q, 0.1),
        "supcon": lambda a, b, q: supcon(torch.stack([a, b], 1), labels.to(a.device), 0.1),
    }
    for name, loss in losses.items():
        results = []
        for device in ("cpu", "cuda"):
            a, b = (t.to(device, dtype).detach().clone().requires_grad_() for t in (z1, z2))
            value = loss(a, b, queue.to(device, dtype))
            value.backward()
            assert value.dtype == torch.float32, name
            results.append((value.detach().cpu(), a.grad.float().cpu()))
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(results[1][0], results[0][0], atol=tol, rtol=tol, msg=name)
        torch.testing.assert_close(results[1][1], results[0][1], atol=tol, rtol=tol, msg=name)


def test_view_loader_gives_the_same_views_on_cpu_and_gpu():
    data = load_digits(16, split="test")
    batches = {d: next(iter(ViewLoader(data, BatchedAugment.digits(16), batch_size=32, seed=3, device=d)))
               for d in ("cpu", "cuda")}
    for cpu_view, gpu_view in zip(batches["cpu"][0], batches["cuda"][0]):
        assert gpu_view.device.type == "cuda"
        torch.testing.assert_close(gpu_view.cpu(), cpu_view, atol=1e-4, rtol=0)
    assert torch.equal(batches["cpu"][1], batches["cuda"][1].cpu())


@pytest.mark.parametrize("make_method", [
    lambda: SimCLR(SmallCNN(1, width=16, out_dim=64), projection_dim=32),
    lambda: MoCo(SmallCNN(1, width=16, out_dim=64), projection_dim=32, queue_size=256),
    lambda: SupCon(SmallCNN(1, width=16, out_dim=64), projection_dim=32),
], ids=["simclr", "moco", "supcon"])
def test_every_method_trains_on_the_gpu_under_autocast(make_method):
    torch.manual_seed(0)
    method = make_method()
    loader = ViewLoader(load_digits(16, split="train"), BatchedAugment.digits(16), batch_size=128, seed=0, device="cuda")
    history = fit(method, loader, steps=60, lr=2e-3, device="cuda", progress=False, amp=True)
    assert next(method.parameters()).device.type == "cuda"
    assert all(math.isfinite(x) for x in history.step_loss)
    assert sum(history.step_loss[-10:]) < sum(history.step_loss[:10]), "the loss should fall over 60 steps"


def test_ore_trains_under_autocast_and_detects_from_cpu_images():
    from clcourse.data import SCENE_CLASSES, DetectionBatches, make_scenes, task_annotations
    from clcourse.lessons.open_world import evaluate
    from clcourse.methods import ORE

    scenes = make_scenes(32, 32, seed=0)
    boxes, labels = task_annotations(scenes.boxes, scenes.box_labels, [1, 2])
    model = ORE(len(SCENE_CLASSES), [1, 2], 32, clustering_start=1, update_every=1)
    history = fit(model, DetectionBatches(scenes.images, boxes, labels, 8), steps=4, device="cuda", progress=False)
    assert all(math.isfinite(loss) for loss in history.step_loss) and model.known.is_cuda
    found = model.detect(scenes.images[:4])  # CPU images in, CPU detections out
    assert all(d.boxes.device.type == "cpu" for d in found)
    assert math.isfinite(evaluate(model, scenes)["wilderness_impact"])
