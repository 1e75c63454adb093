"""``torchrun --nproc_per_node=2 -m clcourse train ...``: data-parallel training on CPU (gloo)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clcourse.losses import nt_xent
from clcourse.data import shard_rows
from clcourse.recipes import build, get_recipe

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed next to this Python")

WORLD, BATCH, STEPS = 2, 32, 3


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-process run shared by the tests below (a torchrun start costs tens of seconds here)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    env = {**os.environ, "CLCOURSE_PROFILE": "quick"}
    command = [TORCHRUN, "--standalone", f"--nproc_per_node={WORLD}", "-m", "clcourse", "train", "simclr",
               "--dataset", "digits", "--steps", str(STEPS), "--batch-size", str(BATCH), "--draws", "1",
               "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    return out, result


def test_two_processes_train_and_only_rank_0_writes(ddp_run):
    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == WORLD and metrics["steps"] == STEPS
    assert set(metrics["linear_probe"]) == {"1%", "10%", "100%"}
    assert (out / "last.pt").is_file() and (out / "history.json").is_file()
    assert result.stdout.count("linear probe 100%") == 1  # one summary: rank 0's


def test_the_first_loss_is_the_loss_of_the_global_batch(ddp_run):
    """Step 0 of 2 processes = NT-Xent of the whole global batch, negatives from both processes.

    On CPUs each process normalises its own share with batch norm (SyncBatchNorm needs GPUs),
    so the one-process reference computes the projections share by share, then one NT-Xent
    over all of them.
    """
    out, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    logged = json.loads((out / "history.json").read_text())["step_loss"][0]

    recipe = get_recipe("simclr", "quick", "digits").override(steps=STEPS, batch_size=BATCH)
    method, loader, _, _ = build(recipe, "cpu")
    (x1, x2), _ = next(iter(loader))
    with torch.no_grad():
        z1, z2 = [], []
        for rank in range(WORLD):
            rows = shard_rows(BATCH, rank, WORLD)
            z = method.project(torch.cat([x1[rows], x2[rows]]))
            z1.append(z.chunk(2)[0])
            z2.append(z.chunk(2)[1])
        global_loss = nt_xent(torch.cat(z1), torch.cat(z2), recipe.temperature).item()
        local_losses = [nt_xent(a, b, recipe.temperature).item() for a, b in zip(z1, z2)]
    assert logged == pytest.approx(global_loss, abs=1e-5)
    # Discriminates: without the gathered negatives each process would see only its own share.
    assert abs(logged - sum(local_losses) / WORLD) > 1e-2


def test_channels_last_weights_are_laid_out_before_ddp_builds_its_buckets(ddp_run):
    """The digits recipe trains channels-last: converted after DDP was built, every gradient bucket's strides
    would differ from its gradients' and torch warns on each backward."""
    _, result = ddp_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert get_recipe("simclr", "quick", "digits").channels_last
    assert "Grad strides do not match bucket view strides" not in result.stderr
