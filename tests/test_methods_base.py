"""Tests of clcourse.methods.base: what every method shares."""

import pytest
import torch
from torch import nn

from clcourse.methods import NNCLR, PCL, Method, MoCo, SimCLR, SupCon, Triplet, views_and_labels


class Identity(nn.Module):
    out_dim = 4

    def forward(self, x):
        return x.flatten(1)


def test_the_base_gives_forward_project_hooks_and_the_temperature_check():
    method = Method(Identity(), nn.Linear(4, 2), temperature=0.5)
    x = torch.rand(3, 1, 2, 2)
    assert torch.equal(method(x), x.flatten(1)) and method.project(x).shape == (3, 2)
    assert method.temperature == 0.5 and method.gather_distributed is False and method.sync_batch_norm
    method.on_epoch_start(0), method.on_step_end(), method.on_epoch_end(1)  # no-ops
    with pytest.raises(NotImplementedError, match="training_step"):
        method.training_step(None)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        Method(Identity(), temperature=0.0)
    assert isinstance(Method(Identity()).projector, nn.Identity)


def test_every_method_is_a_method_and_says_whether_it_gathers():
    encoder = Identity()
    for cls in (SimCLR, MoCo, SupCon, NNCLR, PCL):
        method = cls(encoder, projection_dim=2, gather_distributed=True)
        assert isinstance(method, Method) and method.gather_distributed is True
    assert Triplet(encoder, projection_dim=2).gather_distributed is None  # nothing to gather
    assert MoCo.sync_batch_norm is False and SimCLR.sync_batch_norm  # MoCo guards BN with shuffle-BN


def test_views_and_labels_checks_the_image_batch():
    x = torch.rand(2, 1, 4, 4)
    assert views_and_labels(([x, x], None), "M", n_views=2)[1] is None
    with pytest.raises(ValueError, match="M expects 2 views per image, got 3"):
        views_and_labels(([x, x, x], None), "M", n_views=2)
    with pytest.raises(ValueError, match="at least 2 view"):
        views_and_labels(([x], None), "M", min_views=2)
    with pytest.raises(ValueError, match="same shape"):
        views_and_labels(([x, torch.rand(2, 1, 5, 5)], None), "M")
