"""SimCSE: the training step is InfoNCE between two dropout passes (or a sentence and its paraphrase), dropout off
gives the identical-views closed form, and bad batches are named."""

import math

import pytest
import torch

from clcourse.losses import paired_info_nce
from clcourse.methods.simcse import SimCSE
from clcourse.text_encoders import TransformerSentenceEncoder

IDS = torch.tensor([[3, 5, 2, 0], [4, 4, 1, 6], [1, 2, 0, 0], [6, 5, 4, 3]])


def test_training_step_is_info_nce_between_two_dropout_passes():
    torch.manual_seed(0)
    method = SimCSE(TransformerSentenceEncoder(7, dim=16, dropout=0.1)).train()
    state = torch.get_rng_state()
    loss = method.training_step(IDS)
    torch.set_rng_state(state)  # the same two dropout masks again
    first, second = method.encoder(IDS), method.encoder(IDS)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(loss, paired_info_nce(first, second, 0.05))
    loss.backward()
    assert method.encoder.words.weight.grad.abs().sum() > 0


def test_without_dropout_the_positive_is_the_sentence_itself():
    torch.manual_seed(0)
    method = SimCSE(TransformerSentenceEncoder(7, dim=16, dropout=0.0), temperature=0.5).train()
    z = method.encoder(IDS)
    s = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(z, dim=1).T
    # identical views: cos(h_i, h_i') = 1, l_i = log sum_j exp((s_ij - 1) / t)
    expected = torch.logsumexp((s - 1) / 0.5, dim=1).mean()
    torch.testing.assert_close(method.training_step(IDS), expected, atol=1e-5, rtol=1e-5)
    # and a constant encoder (every sentence alike) is at the chance level log B
    constant = SimCSE(TransformerSentenceEncoder(7, dim=16, dropout=0.0)).train()
    with torch.no_grad():
        constant.encoder.words.weight.zero_()
        constant.encoder.positions.weight.zero_()
    torch.testing.assert_close(constant.training_step(IDS), torch.tensor(math.log(4)), atol=1e-5, rtol=1e-5)


def test_supervised_step_takes_the_paraphrase_as_the_positive():
    torch.manual_seed(0)
    method = SimCSE(TransformerSentenceEncoder(7, dim=16, dropout=0.0)).eval()  # no dropout: runs in eval mode too
    paraphrases = IDS.flip(1).roll(1, dims=0).clamp(min=1)
    expected = paired_info_nce(method.encoder(IDS), method.encoder(paraphrases), 0.05)
    torch.testing.assert_close(method.training_step((IDS, paraphrases)), expected)


@pytest.mark.parametrize("batch, message", [
    (IDS[:1], "at least 2 sentences"),
    ((IDS, IDS[:3]), "and 3 positives"),
    (IDS.float(), "integer tensor"),
    (torch.full((2, 3), 9), r"in \[0, 7\)"),
])
def test_bad_batches_are_named(batch, message):
    method = SimCSE(TransformerSentenceEncoder(7, dim=16)).train()
    with pytest.raises(ValueError, match=message):
        method.training_step(batch)


def test_unsupervised_step_refuses_eval_mode_and_bad_temperature():
    method = SimCSE(TransformerSentenceEncoder(7, dim=16)).eval()
    with pytest.raises(RuntimeError, match="training mode"):
        method.training_step(IDS)
    with pytest.raises(ValueError, match="temperature"):
        SimCSE(TransformerSentenceEncoder(7, dim=16), temperature=0.0)
