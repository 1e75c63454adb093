"""Every image method of the recipes, trained on 2 processes, equals one process on the concatenated batch.

The contract behind ``gather_distributed``: with it, the losses and the parameters of a run on
W processes (DistributedDataParallel, gloo) follow the single-process run on the global batch
step for step; without it each process contrasts its own share only, and the run differs. A new
method in :data:`clcourse.recipes.IMAGE_METHODS` is tested here automatically: one that ignores the
option (trains on local negatives) fails.

The dense methods (:data:`clcourse.recipes.DENSE_METHODS`) are left out, and ``clcourse.recipes.build``
refuses them on several processes (tests/test_recipes.py): pixel contrast cannot gather at all (its
anchors and pixel memories are each process's own; it raises on ``gather_distributed=True``), and
PCRL, though it gathers its keys with MoCo's code (tested here as ``moco``), draws its two views and
their flips and turns inside the method from each process's own share, and its U-Net normalises with
batch norm: no run on 2 processes can equal one process on the global batch.

The encoder and head have no batch norm, so the per-process statistics of data-parallel training
play no part and the comparison can be exact. State across steps is gathered too: MoCo's queue and
NNCLR's support set take the keys / projections of every process in rank order, the rows of the
global batch, so every process looks up the same set as the single process (NNCLR's neighbours
are then the same rows; without gathering each process's support set holds its own share only).

PCL's E-step (k-means of the whole training set, run here before the second step) is computed by
rank 0 and received by the others, so the processes hold identical prototypes, bit for bit. Against
the one-process run they agree up to rounding only: the E-step encodes the images with weights that
took one step of DDP's averaged gradients, which differ from the single process's in the last bits;
the assignments are the same and the prototypes and concentrations agree to 1e-5.

BYOL and SimSiam have nothing to gather: their loss is a mean of per-image terms, so the local run equals the
global one too (with linear heads, no batch norm): what gathering buys them is nothing. Barlow Twins' cross-
correlation is a statistic of the batch; without gathering each process correlates its own share.
"""


import pytest
import torch
from torch import nn

from clcourse.distributed import DistributedMethod
from clcourse.methods import PCL, Triplet
from clcourse.recipes import IMAGE_METHODS, NONCONTRASTIVE_METHODS, get_recipe, method_class
from gloo import run_on_processes

WORLD, BATCH, STEPS = 2, 16, 3
PER_IMAGE_LOSS = ("byol", "simsiam")  # a mean over images: nothing to gather
PCL_IMAGES = 40  # PCL's training set: its batches carry indices into it


class LinearEncoder(nn.Module):
    """[B, 1, 8, 8] -> [B, 16], no batch norm."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 16)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_method(name: str, gather: bool) -> nn.Module:
    torch.manual_seed(0)  # the same weights in every process and in the reference
    recipe = get_recipe(name, "quick", "digits")
    options = {**recipe.method_options, **({"queue_size": 64} if name in ("moco", "pcl") else {}),
               **({"num_clusters": (4, 8), "warmup_epochs": 1} if name == "pcl" else {}),
               # NNCLR's default prediction head normalises with the batch statistics of each process;
               # a linear one keeps the comparison exact, like head_layers=1 for the projection head.
               **({"prediction_layers": 1} if name in ("nnclr", "byol", "simsiam") else {}),
               # likewise SimSiam's batch norm on the projections (its quick recipe's)
               **({"projection_batch_norm": False} if name == "simsiam" else {})}
    if name not in NONCONTRASTIVE_METHODS:
        options["temperature"] = recipe.temperature
    method = method_class(name)(LinearEncoder(), projection_dim=8, head_layers=1, gather_distributed=gather,
                                **options)
    if name == "pcl":
        method.attach_dataset(torch.rand(PCL_IMAGES, 1, 8, 8, generator=torch.Generator().manual_seed(7)))
    return method


def global_batch(step: int, indices: bool = False):
    g = torch.Generator().manual_seed(100 + step)
    x1, x2 = torch.rand(BATCH, 1, 8, 8, generator=g), torch.rand(BATCH, 1, 8, 8, generator=g)
    if indices:  # PCL: each image's row in its training set
        return [x1, x2], torch.randperm(PCL_IMAGES, generator=g)[:BATCH]
    return [x1, x2], torch.randint(-1, 3, (BATCH,), generator=g)  # -1: unlabelled (SupCon)


def train(method, trainee, rows: slice) -> dict:
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    losses, pcl = [], isinstance(method, PCL)
    for step in range(STEPS):
        if pcl and step < 2:
            method.on_epoch_start(step)  # epoch 0: the warm-up; before step 1, the E-step
        views, labels = global_batch(step, indices=pcl)
        loss = trainee.training_step(([v[rows] for v in views], labels[rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_step_end()
        losses.append(loss.item())
    result = {"losses": losses, "weights": method.encoder.fc.weight.detach().clone()}
    if pcl:
        result["clusters"] = [[c.prototypes.clone(), c.concentration.clone(), c.assignments.clone()]
                              for c in method.clusterings]
    return result


def one_process_run(name: str) -> dict:
    """The reference: one process trains on the whole global batch."""
    method = make_method(name, gather=False)
    return train(method, method, rows=slice(None))


def _worker(rank):
    share = BATCH // WORLD
    rows = slice(rank * share, (rank + 1) * share)
    results = {}
    for name in IMAGE_METHODS:
        for gather in (True, False):
            method = make_method(name, gather)
            trainee = DistributedMethod(method, "cpu", local_negatives=not gather)
            results[f"{name}/{'gathered' if gather else 'local'}"] = train(method, trainee, rows)
    refused = []
    for method in (make_method("simclr", False), Triplet(LinearEncoder(), projection_dim=8)):
        try:
            DistributedMethod(method, "cpu")
        except ValueError as error:
            refused.append(str(error))
    results["refused"] = refused
    return results


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return run_on_processes(_worker, WORLD, tmp_path_factory.mktemp("methods"), timeout=300)


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_gathered_training_equals_one_process_on_the_global_batch(two_processes, name):
    reference = one_process_run(name)
    for results in two_processes:
        run = results[f"{name}/gathered"]
        assert run["losses"] == pytest.approx(reference["losses"], abs=2e-5)
        torch.testing.assert_close(run["weights"], reference["weights"], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_local_negatives_train_differently(two_processes, name):
    """Discriminates: a method that ignored gather_distributed would train like this, and fail above; except
    BYOL and SimSiam, whose per-image losses need nothing from the other processes."""
    reference = one_process_run(name)
    local = two_processes[0][f"{name}/local"]
    gap = max(abs(a - b) for a, b in zip(local["losses"], reference["losses"]))
    if name in PER_IMAGE_LOSS:
        assert gap < 2e-5
        torch.testing.assert_close(local["weights"], reference["weights"], atol=2e-5, rtol=1e-4)
    else:
        assert gap > 1e-3


def test_pcl_e_step_gives_every_process_the_same_prototypes(two_processes):
    """Identical in every process (rank 0's result); equal to one process's up to rounding (module docstring)."""
    first, second = (results["pcl/gathered"]["clusters"] for results in two_processes)
    for mine, theirs in zip(first, second):
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    reference = one_process_run("pcl")["clusters"]
    for (prototypes, phi, assignments), (ref_prototypes, ref_phi, ref_assignments) in zip(first, reference):
        assert torch.equal(assignments, ref_assignments) and assignments.shape == (PCL_IMAGES,)
        torch.testing.assert_close(prototypes, ref_prototypes, atol=1e-5, rtol=0)
        torch.testing.assert_close(phi, ref_phi, atol=1e-5, rtol=1e-5)


def test_a_method_without_gathering_is_refused_unless_asked_for(two_processes):
    simclr, triplet = two_processes[0]["refused"]
    assert "gather_distributed=False" in simclr and "local_negatives=True" in simclr
    assert "Triplet cannot gather" in triplet
