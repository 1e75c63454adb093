"""``clcourse.lessons.pcrl_runs``: lesson 15's runs give the same result in a worker as here, and rebuild."""

import math

import pytest
import torch

from clcourse.data import make_lesions
from clcourse.lessons.pcrl_runs import LesionRun, run_lesion, train_lesion_runs


@pytest.fixture(scope="module")
def data():
    return (make_lesions(16, 32, seed=0), make_lesions(8, 32, seed=2), {"A": make_lesions(4, 32, seed=1)})


def small_run(data, seed=0, **overrides):
    unlabelled, labelled, tests = data
    settings = dict(pretrain_steps=2, finetune_steps=2, size=32, widths=(4, 8), batch_size=4)
    return LesionRun(seed, unlabelled, labelled, tests, **{**settings, **overrides})


@pytest.mark.parametrize("steps", [dict(pretrain_steps=-1), dict(finetune_steps=0), dict(pretrain_steps=1.5)])
def test_a_run_needs_whole_step_budgets(data, steps):
    with pytest.raises(ValueError, match="steps"):
        small_run(data, **steps)


def test_a_run_records_both_terms_every_step_and_rebuilds_what_it_trained(data):
    result = run_lesion(small_run(data))
    assert len(result.contrast_trace) == len(result.reconstruction_trace) == 2
    assert all(math.isfinite(v) for v in result.contrast_trace + result.reconstruction_trace)
    method = result.pcrl()
    assert not method.training and method.contrast_trace == result.contrast_trace
    assert torch.equal(method.queue, result.method_state["queue"])
    assert not torch.equal(method.queue, result.run.build().queue)  # pre-training enqueued keys
    segmenter = result.segmenter()
    for name, value in segmenter.state_dict().items():
        assert torch.equal(value, result.segmenter_state[name])
    assert set(result.dice) == {"A"} and 0 <= result.dice["A"] <= 100


def test_no_pre_training_fine_tunes_the_untrained_u_net(data):
    result = run_lesion(small_run(data, pretrain_steps=0))
    assert result.contrast_trace == [] and result.reconstruction_trace == []
    untrained = result.run.build().state_dict()
    assert all(torch.equal(value, untrained[name]) for name, value in result.method_state.items())


def test_an_ablation_switches_its_term_off(data):
    result = run_lesion(small_run(data, switches=dict(contrastive=False)))
    assert all(math.isnan(v) for v in result.contrast_trace)
    assert all(math.isfinite(v) for v in result.reconstruction_trace)


def test_runs_give_the_same_results_in_workers_and_here(data):
    runs = [small_run(data, seed=0), small_run(data, seed=1, pretrain_steps=0)]
    here = train_lesion_runs(runs, workers=1, progress=False)
    apart = train_lesion_runs(runs, workers=2, progress=False)
    for a, b in zip(here, apart):
        assert a.dice == b.dice and a.contrast_trace == b.contrast_trace
        assert all(torch.equal(value, b.segmenter_state[name]) for name, value in a.segmenter_state.items())


def test_runs_must_be_lesion_runs():
    with pytest.raises(ValueError, match="LesionRun"):
        train_lesion_runs([])
