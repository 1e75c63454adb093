"""Tests of clcourse.checks: each bad input names what was expected."""

import numpy as np
import pytest
import torch

from clcourse.checks import check_choice, check_images, check_labels, check_number, check_tensor


def test_check_images_accepts_float_batches_and_names_the_expected_layout():
    check_images(torch.rand(2, 3, 4, 4))
    check_images(torch.rand(2, 1, 4, 4), channels=1)
    with pytest.raises(TypeError, match=r"expected images \[B, C, H, W\].*got ndarray"):
        check_images(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\] as a floating-point tensor.*got torch.uint8"):
        check_images(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), channels=1)
    with pytest.raises(ValueError, match=r"expected views \[N, C, H, W\].*shape \[3, 4, 4\]"):
        check_images(torch.rand(3, 4, 4), name="views", batch="N")
    with pytest.raises(ValueError, match="C = 1 or 3 channels, got shape"):
        check_images(torch.rand(2, 2, 4, 4))


def test_tensor_label_number_and_choice_checks():
    check_tensor("z", torch.rand(3, 2), "[N, D]")
    with pytest.raises(ValueError, match=r"z must be 2-D \[N, D\], got shape \[3\]"):
        check_tensor("z", torch.rand(3), "[N, D]")
    with pytest.raises(ValueError, match="floating-point"):
        check_tensor("z", torch.ones(3, 2, dtype=torch.long), "[N, D]")
    with pytest.raises(ValueError, match=r"one per sample\), got \[2\]"):
        check_labels(torch.zeros(2, dtype=torch.long), 3, "sample")
    assert check_number("t", torch.tensor(0.5)) == 0.5
    with pytest.raises(ValueError, match="t must be a finite number > 0"):
        check_number("t", 0.0)
    with pytest.raises(TypeError, match="real number"):
        check_number("t", True)
    with pytest.raises(ValueError, match="'a', 'b'"):
        check_choice("mode", "c", ("a", "b"))
