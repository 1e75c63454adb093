import pytest
import torch
from torch import nn

from clcourse.augment import BatchedAugment
from clcourse.encoders import MLP, SmallCNN
from clcourse.finetune import Classifier, accuracy, fine_tune, train_supervised


def bars(n, seed):
    """An easy 3-class problem on 8x8 images: a horizontal bar, a vertical bar or the diagonal, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    pos = torch.randint(1, 7, (n,), generator=g)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i], :] += 0.7
        elif y[i] == 1:
            x[i, 0, :, pos[i]] += 0.7
        else:
            x[i, 0].diagonal().add_(0.7)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: extra threads only add synchronisation (several times slower on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return bars(60, 0), bars(200, 1)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SmallCNN(1, width=8, out_dim=16)


SHORT = dict(steps=40, batch_size=32, lr=1e-2)


def params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_fine_tuning_beats_the_frozen_probe_and_leaves_the_pretrained_encoder_alone(data, encoder):
    (xtr, ytr), (xte, yte) = data
    before = params(encoder).clone()
    probe = fine_tune(encoder, xtr, ytr, encoder_lr=0, **SHORT)
    tuned = fine_tune(encoder, xtr, ytr, encoder_lr=1e-2, **SHORT)
    assert torch.equal(params(encoder), before)  # a copy was trained
    assert torch.equal(params(probe.encoder), before)  # encoder_lr=0: only the head learned
    assert not torch.equal(params(tuned.encoder), before)
    assert all(p.requires_grad for p in probe.encoder.parameters())
    # random features are poor for bar orientation; end-to-end training fixes that
    assert tuned.accuracy(xte, yte) > probe.accuracy(xte, yte) + 0.2
    assert len(tuned.step_loss) == SHORT["steps"]
    assert tuned.step_loss[-1] < tuned.step_loss[0]
    assert not tuned.training


def test_supervised_baseline_starts_from_random_weights_whatever_the_encoder(data, encoder):
    (xtr, ytr), (xte, yte) = data
    other = SmallCNN(1, width=8, out_dim=16)
    with torch.no_grad():
        for p in other.parameters():
            p.fill_(0.5)
    a = train_supervised(encoder, xtr, ytr, seed=3, **SHORT)
    b = train_supervised(other, xtr, ytr, seed=3, **SHORT)
    torch.testing.assert_close(params(a), params(b))  # the given weights were re-initialised
    assert a.accuracy(xte, yte) > 0.8
    c = train_supervised(encoder, xtr, ytr, seed=4, **SHORT)
    assert not torch.equal(params(a), params(c))


def test_runs_are_reproducible_and_leave_the_global_rng_alone(data, encoder):
    (xtr, ytr), _ = data
    augment = BatchedAugment.digits(8, rotation_degrees=10.0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = fine_tune(encoder, xtr, ytr, augment=augment, seed=1, steps=5, batch_size=16)
    assert torch.equal(torch.get_rng_state(), state)
    b = fine_tune(encoder, xtr, ytr, augment=augment, seed=1, steps=5, batch_size=16)
    c = fine_tune(encoder, xtr, ytr, augment=augment, seed=2, steps=5, batch_size=16)
    assert a.step_loss == b.step_loss and a.step_loss != c.step_loss
    torch.testing.assert_close(params(a), params(b))


def test_classifier_predict_and_accuracy(data):
    (xtr, ytr), _ = data
    torch.manual_seed(0)
    model = Classifier(MLP(64, (8,), 5), num_classes=3)
    pred = model.predict(xtr, batch_size=7)
    assert pred.shape == (60,) and pred.dtype == torch.int64
    model.eval()
    with torch.no_grad():
        expected = model(xtr).argmax(1)
    assert torch.equal(pred, expected)
    assert accuracy(model, xtr, ytr) == pytest.approx((expected == ytr).float().mean().item())
    assert model.accuracy(xtr, expected) == 1.0
    model.train()
    model.predict(xtr[:4])
    assert model.training  # the mode is restored


def test_num_classes_and_tiny_label_sets(encoder):
    x, y = bars(3, 5)
    model = fine_tune(encoder, x, torch.tensor([0, 1, 2]), num_classes=10, steps=2, batch_size=8)
    assert model.head.out_features == 10
    with pytest.raises(ValueError, match="num_classes"):
        fine_tune(encoder, x, torch.tensor([0, 1, 9]), num_classes=5, steps=1)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(images=torch.rand(4, 8, 8)), ValueError, r"\[N, C, H, W\]"),
    (dict(images=torch.zeros(4, 1, 8, 8, dtype=torch.uint8)), ValueError, "float"),
    (dict(labels=torch.tensor([0.0, 1.0, 0.0, 1.0])), ValueError, "integer tensor"),
    (dict(labels=torch.tensor([0, 1, 0])), ValueError, "one per image"),
    (dict(labels=[0, 1, 0, 1]), TypeError, "labels"),
    (dict(labels=torch.tensor([0, -1, 0, 1])), ValueError, ">= 0"),
    (dict(steps=0), ValueError, "steps"),
    (dict(batch_size=1.5), ValueError, "batch_size"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(encoder_lr=-1e-3), ValueError, "encoder_lr"),
    (dict(augment="crop"), TypeError, "augment"),
    (dict(seed=-1), ValueError, "seed"),
])
def test_bad_inputs_raise(encoder, kwargs, error, match):
    args = dict(images=torch.rand(4, 1, 8, 8), labels=torch.tensor([0, 1, 0, 1]), steps=1)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fine_tune(encoder, args.pop("images"), args.pop("labels"), **args)


def test_bad_encoders_raise():
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    with pytest.raises(TypeError, match="out_dim"):
        fine_tune(nn.Flatten(), x, y, steps=1)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(64))
            self.out_dim = 64

        def forward(self, x):
            return x.flatten(1) * self.scale

    with pytest.raises(ValueError, match="reset_parameters"):
        train_supervised(Scaled(), x, y, steps=1)
    assert fine_tune(Scaled(), x, y, steps=1).head.in_features == 64  # fine-tuning needs no reset
