
import pytest
import torch
import torch.distributed as dist

from clcourse.distributed import (
    all_gather_cat,
    all_reduce_sum,
    gather_with_grad,
    is_distributed,
    rank,
    setup_from_env,
    world_size,
)
from clcourse.losses import nt_xent, supcon
from gloo import run_on_processes

WORLD = 2
N = 4  # samples per process
D_IN, D = 6, 5
# Flat SupCon labels, rank 0 then rank 1: rank 0 owns 3 anchors with a positive, rank 1 none
# (its loss is an empty sum, yet it must still join the backward's all_reduce).
FLAT_LABELS = torch.tensor([0, 0, 0, 1, 2, 3, 4, 5])
CASES = ("nt_xent", "supcon_out", "supcon_in", "supcon_flat")


# --------------------------------------------------------------------------- one process


def test_without_a_process_group_everything_is_single_process():
    assert not is_distributed() and rank() == 0 and world_size() == 1
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x
    z, labels = torch.randn(6, 2, 4), torch.tensor([0, 1, 0, 1, 2, 2])
    assert all_gather_cat(x) is x and all_reduce_sum(x) is x
    gathered = nt_xent(z[:, 0], z[:, 1], 0.3, gather_distributed=True)
    assert torch.equal(gathered, nt_xent(z[:, 0], z[:, 1], 0.3))
    assert torch.equal(supcon(z, labels, 0.2, "in", gather_distributed=True), supcon(z, labels, 0.2, "in"))


def test_setup_without_torchrun_stays_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert isinstance(setup_from_env(), torch.device)
    assert not is_distributed()


def test_setup_names_missing_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="missing: MASTER_ADDR, MASTER_PORT"):
        setup_from_env("gloo")


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 2), gather_distributed=True)
    with pytest.raises(ValueError, match="needs z of shape"):
        supcon(torch.randn(4, 3), gather_distributed=True)
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        supcon(torch.randn(4, 2, 3), torch.zeros(5, dtype=torch.long), gather_distributed=True)
    with pytest.raises(TypeError, match="torch.Tensor"):
        gather_with_grad([1.0, 2.0])


# --------------------------------------------------------------------------- two processes


def _global_batch(case):
    """The concatenated batch of all processes: inputs [W*N, V, D_IN] (or flat) and labels."""
    g = torch.Generator().manual_seed(CASES.index(case))
    if case == "supcon_flat":
        return torch.randn(WORLD * N, D_IN, generator=g), FLAT_LABELS
    return torch.randn(WORLD * N, 2, D_IN, generator=g), torch.randint(0, 3, (WORLD * N,), generator=g)


def _linear():
    torch.manual_seed(0)  # same weights in every process and in the reference
    return torch.nn.Linear(D_IN, D)


def _loss(case, z, labels, distributed):
    if case == "nt_xent":
        return nt_xent(z[:, 0], z[:, 1], 0.5, gather_distributed=distributed)
    variant = "in" if case == "supcon_in" else "out"
    return supcon(z, labels, 0.1, variant, gather_distributed=distributed)


def _step(case, x, labels, distributed):
    """Forward a linear layer, the loss and backward; return the loss, dL/dz and the weight grads."""
    model = _linear()
    z = model(x)
    z.retain_grad()
    loss = _loss(case, z, labels, distributed)
    loss.backward()
    if distributed:
        # What DistributedDataParallel does to gradients: average them over the processes.
        # (DDP itself is not used: constructing one imports torch._dynamo, seconds per process.)
        for parameter in model.parameters():
            dist.all_reduce(parameter.grad)
            parameter.grad /= WORLD
    return {"loss": loss.detach(), "z_grad": z.grad, "weight_grad": model.weight.grad, "bias_grad": model.bias.grad}


def _worker(process_rank):
    own = slice(process_rank * N, (process_rank + 1) * N)
    results = {}
    for case in CASES:
        x, labels = _global_batch(case)
        results[case] = _step(case, x[own], labels[own], distributed=True)

    x = torch.arange(6.0).reshape(3, 2).add(10 * process_rank).requires_grad_()
    gathered = gather_with_grad(x)
    (gathered * torch.arange(12.0).reshape(6, 2)).sum().backward()
    results["gather"] = {"gathered": gathered.detach(), "x_grad": x.grad}
    mine = torch.tensor([1.0, 2.0]) * (process_rank + 1)
    results["collectives"] = {"sum": all_reduce_sum(mine), "mine": mine,
                              "ranks": all_gather_cat(torch.tensor([process_rank]))}

    try:  # no anchor anywhere has a positive: every process must raise, none may hang
        supcon(torch.randn(N, D), torch.arange(N) + process_rank * N, gather_distributed=True)
        results["raised"] = False
    except ValueError:
        results["raised"] = True
    return results


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    return run_on_processes(_worker, WORLD, tmp_path_factory.mktemp("distributed"))


@pytest.mark.parametrize("case", CASES)
def test_two_processes_match_one_process_on_the_concatenated_batch(two_process_results, case):
    x, labels = _global_batch(case)
    reference = _step(case, x, labels, distributed=False)
    per_rank = [results[case] for results in two_process_results]
    exact = {"rtol": 0.0, "atol": 1e-5}

    # The loss: the mean over processes is the single-process loss.
    torch.testing.assert_close(torch.stack([r["loss"] for r in per_rank]).mean(), reference["loss"], **exact)
    # dL/dz: each process gets W times its slice (gradients summed over processes, see the docstring).
    for r, result in enumerate(per_rank):
        torch.testing.assert_close(result["z_grad"] / WORLD, reference["z_grad"][r * N : (r + 1) * N], **exact)
    # Weights after DDP's averaging: exactly the single-process gradients, on every process.
    for result in per_rank:
        torch.testing.assert_close(result["weight_grad"], reference["weight_grad"], **exact)
        torch.testing.assert_close(result["bias_grad"], reference["bias_grad"], **exact)


def test_gather_concatenates_in_rank_order_and_sums_gradients(two_process_results):
    everything = torch.cat([torch.arange(6.0).reshape(3, 2) + 10 * r for r in range(WORLD)])
    weights = torch.arange(12.0).reshape(6, 2)  # d(sum(gathered * weights))/d(gathered)
    for r, results in enumerate(two_process_results):
        assert torch.equal(results["gather"]["gathered"], everything)
        # every process's loss touches x_r through the same weights: W copies summed
        assert torch.equal(results["gather"]["x_grad"], WORLD * weights[3 * r : 3 * (r + 1)])


def test_sums_and_plain_gathers_over_processes(two_process_results):
    for r, results in enumerate(two_process_results):
        assert torch.equal(results["collectives"]["sum"], torch.tensor([3.0, 6.0]))  # (1 + 2) * [1, 2]
        assert torch.equal(results["collectives"]["mine"], torch.tensor([1.0, 2.0]) * (r + 1))  # left unchanged
        assert torch.equal(results["collectives"]["ranks"], torch.arange(WORLD))


def test_no_positive_anywhere_raises_on_every_process(two_process_results):
    assert all(results["raised"] for results in two_process_results)
