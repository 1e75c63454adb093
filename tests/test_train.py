from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from clcourse.methods import Method
from clcourse.train import (
    Budget,
    History,
    count_images,
    eval_mode,
    fit,
    load_checkpoint,
    lr_at,
    parameter_groups,
    save_checkpoint,
    to_device,
)


class SeededLoader:
    """A tiny loader whose epoch e is a pure function of (seed, e), like ViewLoader."""

    def __init__(self, n=64, batch=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.randn(4, 1, generator=g)
        self.batch, self.seed, self.epoch = batch, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x) // self.batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.x), generator=g)
        for i in range(len(self)):
            idx = order[i * self.batch : (i + 1) * self.batch]
            yield [self.x[idx]], self.y[idx]


class Regression(nn.Module):
    """A method whose step uses the global RNG (dropout), so resume must restore it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))
        self.steps_ended = 0

    def training_step(self, batch):
        (x,), y = batch
        return ((self.net(x) - y) ** 2).mean()

    def on_step_end(self):
        self.steps_ended += 1


def run(epochs, ckpt=None, resume=False):
    torch.manual_seed(0)
    model = Regression()
    hist = fit(model, SeededLoader(), epochs=epochs, lr=1e-2, device="cpu",
               checkpoint_dir=ckpt, resume=resume, progress=False)
    return model, hist


def test_fit_learns_and_records_history():
    model, hist = run(5)
    assert hist.epochs == 5 and hist.steps == 20 and model.steps_ended == 20
    assert hist.epoch_loss[-1] < hist.epoch_loss[0]
    assert len(hist.images_per_second) == 5


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    full, full_hist = run(4)
    run(2, ckpt=tmp_path)  # "interrupted" after two epochs
    torch.manual_seed(123)  # a different global state must not matter after resume
    resumed_model = Regression()
    resumed_hist = fit(resumed_model, SeededLoader(), epochs=4, lr=1e-2, device="cpu",
                       checkpoint_dir=tmp_path, resume=True, progress=False)
    for a, b in zip(full.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed_hist.step_loss == full_hist.step_loss


def test_checkpoint_per_epoch_and_safe_load(tmp_path):
    torch.manual_seed(0)
    fit(Regression(), SeededLoader(), epochs=2, device="cpu", checkpoint_dir=tmp_path,
        keep_epoch_checkpoints=True, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt",
                                                             "last.pt"]
    state = load_checkpoint(tmp_path / "epoch_0001.pt")
    assert state["epoch"] == 1 and state["step"] == 4
    untrained = load_checkpoint(tmp_path / "epoch_0000.pt")
    assert untrained["epoch"] == 0 and untrained["step"] == 0 and untrained["history"]["step_loss"] == []
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary file


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last.pt", {"x": torch.ones(1)})

    def broken_save(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last.pt", {"x": torch.zeros(1)})
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["x"], torch.ones(1))


def test_step_and_seconds_budgets():
    torch.manual_seed(0)
    assert fit(Regression(), SeededLoader(), steps=7, device="cpu", progress=False).steps == 7
    hist = fit(Regression(), SeededLoader(), seconds=0.3, device="cpu", progress=False)
    assert hist.step_time[-1] >= 0.3 and hist.steps >= 1


def test_budget_errors():
    with pytest.raises(ValueError, match="exactly one budget"):
        fit(Regression(), SeededLoader(), epochs=1, steps=2, progress=False)
    with pytest.raises(ValueError, match="exactly one budget"):
        fit(Regression(), SeededLoader(), progress=False)
    with pytest.raises(ValueError, match="> 0"):
        fit(Regression(), SeededLoader(), seconds=0, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fit(Regression(), SeededLoader(n=8, batch=16), epochs=1, device="cpu", progress=False)


def test_divergence_is_reported():
    class Diverging(Regression):
        def training_step(self, batch):
            return super().training_step(batch) * float("nan")

    with pytest.raises(RuntimeError, match="diverged"):
        fit(Diverging(), SeededLoader(), steps=2, device="cpu", progress=False)


def test_cosine_schedule_with_warmup():
    assert lr_at(0.05, 1.0, "cosine", 0.1) == pytest.approx(0.5, rel=1e-6)
    assert lr_at(0.1, 1.0, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_at(1.0, 1.0, "cosine", 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0.7, 2.0, "constant", 0.0) == 2.0


class TwoGroups(Regression):
    """Regression whose last layer is a parameter group of its own with a fixed learning rate."""

    def parameter_groups(self):
        last = set(self.net[2].parameters())
        return [{"params": [p for p in self.parameters() if p not in last]},
                {"params": list(last), "fixed_lr": True}]


def test_a_fixed_lr_group_keeps_its_rate_while_the_others_warm_up_and_decay():
    model, rates = TwoGroups(), []
    optimizer = torch.optim.SGD(parameter_groups(model), lr=0.1)
    record = optimizer.step

    def step(*args, **kwargs):
        rates.append([group["lr"] for group in optimizer.param_groups])
        return record(*args, **kwargs)

    optimizer.step = step
    fit(model, SeededLoader(), steps=8, optimizer=optimizer, schedule="cosine", warmup=0.25, device="cpu",
        progress=False)
    scheduled, fixed = zip(*rates)
    assert set(fixed) == {0.1} and scheduled[0] < scheduled[2] and scheduled[-1] < scheduled[2] < 0.1 + 1e-12
    plain = Regression()
    assert len(parameter_groups(plain)) == 1 and parameter_groups(plain)[0]["params"] == list(plain.parameters())


def test_history_round_trip():
    h = History(step_loss=[1.0], step_lr=[0.1], step_time=[0.5], epoch_loss=[1.0], images_per_second=[10.0])
    assert History.from_dict(h.as_dict()) == h


class ConvClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, 2))

    def training_step(self, batch):
        (x,), y = batch
        return nn.functional.cross_entropy(self.net(x), y)


def test_channels_last_stores_conv_weights_nhwc_and_trains_the_same():
    g = torch.Generator().manual_seed(0)
    batches = [([torch.randn(8, 3, 10, 10, generator=g)], torch.randint(0, 2, (8,), generator=g)) for _ in range(4)]
    runs = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = ConvClassifier()
        runs[channels_last] = (model, fit(model, batches, epochs=2, device="cpu", progress=False,
                                          channels_last=channels_last))
    conv = runs[True][0].net[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert runs[False][0].net[0].weight.is_contiguous()
    # Different convolution kernels (NHWC and NCHW) round differently and 8 Adam steps compound it.
    torch.testing.assert_close(runs[True][1].step_loss, runs[False][1].step_loss, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- budgets, hooks, batches


def test_budget_is_one_of_epochs_steps_or_seconds():
    assert Budget.of(steps=5) == Budget("steps", 5) and str(Budget.of(seconds=1.5)) == "1.5 seconds"
    assert Budget.of(epochs=3).as_dict() == {"epochs": 3, "steps": None, "seconds": None}
    for bad, match in [(dict(), "exactly one"), (dict(steps=1, epochs=1), "exactly one"),
                       (dict(seconds=0), "> 0"), (dict(steps=2.5), "whole number")]:
        with pytest.raises(ValueError, match=match):
            Budget.of(**bad)
    with pytest.raises(ValueError, match="one of"):
        Budget("minutes", 1)
    assert fit(Regression(), SeededLoader(), budget=Budget("steps", 3), device="cpu", progress=False).steps == 3
    with pytest.raises(ValueError, match="exactly one budget"):
        fit(Regression(), SeededLoader(), budget=Budget("steps", 3), epochs=1, progress=False)


@dataclass
class MaskedBatch:
    """A batch type of a later method: images with a per-pixel mask."""

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self):
        return len(self.images)


class MaskedLoader:
    def __len__(self):
        return 2

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(2):
            yield MaskedBatch(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 2, (4, 6, 6), generator=g))


class MaskedMethod(Method):
    """Predicts the mask from the images; counts the loop's hooks."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 2, 1))
        self.steps_ended, self.epochs_ended, self.epochs_started = 0, [], []

    def training_step(self, batch):
        assert isinstance(batch, MaskedBatch)
        return nn.functional.cross_entropy(self.encoder(batch.images), batch.masks)

    def on_step_end(self):
        self.steps_ended += 1

    def on_epoch_start(self, epoch):
        self.epochs_started.append((epoch, self.steps_ended))
        self.eval()  # e.g. PCL's E-step encodes the dataset; the loop puts the method back in training mode

    def on_epoch_end(self, epoch):
        self.epochs_ended.append(epoch)
        self.eval()


def test_any_batch_type_reaches_the_method_and_the_hooks_run():
    torch.manual_seed(0)
    method = MaskedMethod()
    seen_modes = []
    history = fit(method, MaskedLoader(), epochs=3, device="cpu", progress=False,
                  on_epoch_end=lambda epoch, m, h: seen_modes.append(m.training))
    assert history.steps == 6 and method.steps_ended == 6 and method.epochs_ended == [1, 2, 3]
    assert method.epochs_started == [(0, 0), (1, 2), (2, 4)]  # before each epoch's first step
    assert history.images_per_second[0] > 0  # counted with len(batch)
    assert seen_modes == [False, False, False]  # the callback runs after the method's own hook


def test_on_epoch_start_runs_again_for_the_epoch_a_resumed_run_starts(tmp_path):
    """A hook that prepares an epoch (PCL's E-step) is not in the checkpoint of the epoch before: the resumed
    run calls it for its first epoch, as the uninterrupted run did."""
    torch.manual_seed(0)
    first = MaskedMethod()
    fit(first, MaskedLoader(), epochs=2, device="cpu", progress=False, checkpoint_dir=tmp_path)
    resumed = MaskedMethod()
    history = fit(resumed, MaskedLoader(), epochs=3, device="cpu", progress=False, checkpoint_dir=tmp_path,
                  resume=True)
    assert [e for e, _ in first.epochs_started] == [0, 1] and [e for e, _ in resumed.epochs_started] == [2]
    assert history.epochs == 3 and resumed.training is False  # fit leaves the method in eval mode


def test_to_device_and_count_images_know_every_container():
    Pair = namedtuple("Pair", "x y")
    batch = {"a": [torch.ones(2)], "b": Pair(torch.zeros(3), 1), "c": MaskedBatch(torch.ones(5, 1), torch.ones(5))}
    moved = to_device(batch, torch.device("cpu"))
    assert isinstance(moved["b"], Pair) and moved["b"].y == 1 and isinstance(moved["c"], MaskedBatch)
    assert count_images(([torch.ones(4, 1), torch.ones(4, 1)], torch.zeros(4))) == 8
    assert count_images(torch.ones(3, 2)) == 3 and count_images(batch["c"]) == 5


def test_eval_mode_restores_each_modules_mode_even_on_error():
    a, b = nn.Linear(1, 1), nn.Linear(1, 1).eval()
    with eval_mode(a, b):
        assert not a.training and not b.training
    assert a.training and not b.training
    with pytest.raises(RuntimeError), eval_mode(a):
        raise RuntimeError("inside")
    assert a.training


def test_checkpoint_interval_skips_last_pt_between_epochs_but_writes_the_end(tmp_path, monkeypatch):
    from clcourse import train

    written = []
    monkeypatch.setattr(train, "save_checkpoint", lambda path, state: written.append((path.name, state["epoch"])))
    torch.manual_seed(0)
    fit(Regression(), SeededLoader(), epochs=3, device="cpu", checkpoint_dir=tmp_path, checkpoint_interval=1e9,
        progress=False)
    assert written == [("last.pt", 3)]
    written.clear()
    fit(Regression(), SeededLoader(), epochs=3, device="cpu", checkpoint_dir=tmp_path, progress=False)
    assert written == [("last.pt", 1), ("last.pt", 2), ("last.pt", 3)]  # the default: every epoch


def test_a_time_budgets_progress_bar_ends_at_its_total(monkeypatch):
    from clcourse import train

    bars = []

    class RecordingBar(train.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False})
            bars.append(self)

    monkeypatch.setattr(train, "tqdm", RecordingBar)
    torch.manual_seed(0)
    fit(Regression(), SeededLoader(), seconds=0.2, device="cpu")
    assert bars[0].total == 0.2 and bars[0].n == pytest.approx(0.2)  # not more: tqdm would show "?" as the total
