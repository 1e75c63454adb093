"""Lesson 04 helpers: SimCLR's in-batch negatives fed to `clcourse.losses.info_nce`, and its options.

SimCLR [1] contrasts each of the 2N views of a batch with its partner view (the positive) and the
other 2N - 2 views (the negatives). Written as InfoNCE [2] with per-query negatives
[2N, 2N - 2, D], plain InfoNCE is exactly NT-Xent, and the two options of `info_nce` apply:

- hard-negative weighting (Robinson et al. [3], beta): negatives more similar to the query weigh more;
- the debiased estimator (Chuang et al. [4], tau+): removes the expected share of *false negatives*,
  "negatives" with the query's class. With 10 balanced classes (digits), a random negative is a
  false negative 10% of the time, so tau+ = 0.1 is the true class prior.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations (SimCLR), ICML 2020.
[2] van den Oord et al., Representation Learning with Contrastive Predictive Coding (CPC), 2018.
[3] Robinson, Chuang, Sra, Jegelka, Contrastive Learning with Hard Negative Samples, ICLR 2021.
[4] Chuang, Robinson, Lin, Torralba, Jegelka, Debiased Contrastive Learning, NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from clcourse.data import ImageData, ViewLoader
from clcourse.device import torch_threads
from clcourse.encoders import SmallCNN
from clcourse.evaluate import extract_features, knn_accuracy, linear_probe
from clcourse.losses import info_nce
from clcourse.methods.simclr import SimCLR
from clcourse.train import History, eval_mode, fit

__all__ = [
    "in_batch_negatives",
    "in_batch_info_nce",
    "InBatchInfoNCE",
    "false_negative_rate",
    "NegativesRun",
    "train_and_evaluate",
    "evaluate_features",
    "view_embeddings",
]


def in_batch_negatives(z: Tensor) -> Tensor:
    """Every view's negatives in a SimCLR batch: z [2N, D] (view 1 of N samples, then view 2) -> [2N, 2N - 2, D].

    Row i holds all views except i itself and its partner (i + N) mod 2N, in batch order.
    """
    if z.dim() != 2 or z.shape[0] % 2 or z.shape[0] < 4:
        raise ValueError(f"z must be [2N, D] with N >= 2 (two views of N samples), got {list(z.shape)}")
    m = z.shape[0]
    index = torch.arange(m, device=z.device)
    partner = (index + m // 2) % m
    keep = (index.unsqueeze(1) != index) & (partner.unsqueeze(1) != index)  # [2N, 2N]
    columns = index.expand(m, m)[keep].view(m, m - 2)
    return z[columns]


def in_batch_info_nce(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    hard_negative_beta: float = 0.0,
    debiased_tau_plus: float = 0.0,
) -> Tensor:
    """SimCLR's loss as `info_nce`: every one of the 2N views is a query, its partner the positive,
    the other 2N - 2 views its negatives. z1, z2 [N, D] -> scalar.

    With beta = tau+ = 0 this equals `clcourse.losses.nt_xent(z1, z2, temperature)`; the options
    are those of `info_nce` ([3], [4]). Memory: the negatives tensor is [2N, 2N - 2, D].
    """
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape [N, D], got {list(z1.shape)} and {list(z2.shape)}")
    z = torch.cat([z1, z2])
    return info_nce(
        z,
        torch.cat([z2, z1]),
        in_batch_negatives(z),
        temperature,
        hard_negative_beta=hard_negative_beta,
        debiased_tau_plus=debiased_tau_plus,
    )


class InBatchInfoNCE(SimCLR):
    """SimCLR [1] whose loss is `in_batch_info_nce`, with the hard-negative [3] and debiased [4] options.

    Args:
        encoder, projection_dim, hidden_dim, temperature: as for `SimCLR`.
        hard_negative_beta: beta >= 0 of [3] (0: uniform weights on the negatives).
        debiased_tau_plus: tau+ in [0, 1) of [4], the prior probability of a false negative.

    A batch is ``(views, labels)``, views = [x1, x2] each [B, C, H, W]; labels are ignored.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        temperature: float = 0.5,
        *,
        hidden_dim: int | None = None,
        hard_negative_beta: float = 0.0,
        debiased_tau_plus: float = 0.0,
    ):
        super().__init__(encoder, projection_dim=projection_dim, hidden_dim=hidden_dim, temperature=temperature)
        self.hard_negative_beta = hard_negative_beta
        self.debiased_tau_plus = debiased_tau_plus

    def training_step(self, batch) -> Tensor:
        views, _ = batch
        if len(views) != 2:
            raise ValueError(f"InBatchInfoNCE expects 2 views per image, got {len(views)}")
        z1, z2 = self.project(torch.cat(views)).chunk(2)
        return in_batch_info_nce(
            z1, z2, self.temperature,
            hard_negative_beta=self.hard_negative_beta, debiased_tau_plus=self.debiased_tau_plus,
        )


def false_negative_rate(labels: Tensor) -> float:
    """Fraction of SimCLR's in-batch negatives that share their query's label: labels [N] of the N samples.

    Each of the 2N views has 2N - 2 negatives (both views of the N - 1 other samples); a negative is
    a false negative when its sample has the query's label. For C balanced classes this is about
    1 / C (slightly less: a sample is never its own negative).
    """
    if labels.dim() != 1 or labels.shape[0] < 2:
        raise ValueError(f"labels must be [N] with N >= 2, got {list(labels.shape)}")
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    n = labels.shape[0]
    return float((same.sum() - n) / (n * (n - 1)))


@dataclass
class NegativesRun:
    """One model of the comparison.

    Attributes:
        name: e.g. ``"debiased"``.
        hard_negative_beta, debiased_tau_plus: the options it trained with.
        probe: linear-probe accuracy in [0, 1] with each label budget, e.g. ``{"10%": 0.91, "100%": 0.97}``.
        probe_std: their standard deviations over label draws.
        knn: weighted kNN accuracy (k = 20) with all labels.
        history: the training history.
        model: the trained `InBatchInfoNCE`.
    """

    name: str
    hard_negative_beta: float
    debiased_tau_plus: float
    probe: dict[str, float]
    probe_std: dict[str, float]
    knn: float
    history: History = field(repr=False)
    model: InBatchInfoNCE = field(repr=False)


def train_and_evaluate(
    name: str,
    train: ImageData,
    test: ImageData,
    augment: Callable[..., Tensor],
    *,
    hard_negative_beta: float = 0.0,
    debiased_tau_plus: float = 0.0,
    make_encoder: Callable[[], nn.Module] | None = None,
    projection_dim: int = 32,
    hidden_dim: int | None = None,
    temperature: float = 0.5,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-6,
    label_fractions: dict[str, float | None] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    num_threads: int | None = None,
    channels_last: bool | None = None,
    **budget,
) -> NegativesRun:
    """Train `InBatchInfoNCE` on `train` and evaluate its frozen encoder on `test`.

    Every run with the same seed starts from the same initial weights and sees the same batches
    and views, so runs differ only by the loss options.

    Args:
        name: stored in the result.
        train, test: `ImageData`; the probe fits on train's features and labels.
        augment: batched ``augment(x, generator=g)``, e.g. ``BatchedAugment.digits(16)``.
        hard_negative_beta, debiased_tau_plus: the options of `info_nce`.
        make_encoder: builds the encoder, called after seeding so that every run with the same
            seed starts from the same weights; default a `SmallCNN` (width 32, 128-d).
        projection_dim: D of the projections the loss sees. The loss holds [2B, 2B - 2, D]
            negatives, so D and the batch size B set its cost.
        hidden_dim: width of the projection head's hidden layer (default: the encoder's output size).
        temperature, batch_size, lr, weight_decay: of the training (Adam, cosine schedule).
        label_fractions: name -> fraction of the training labels for a linear probe (None: all);
            default ``{"10%": 0.1, "100%": None}``. Fractions are averaged over 5 label draws.
        seed: seeds the initialisation, the batch order and the views.
        device: where to train.
        progress: show fit's progress bar.
        num_threads: torch threads during training and feature extraction (None: torch's setting);
            1 is faster for the small models of the quick profile (see `torch_threads`).
        channels_last: passed to `clcourse.train.fit` (True for the small CNN on 8x8 digits).
        **budget: one of ``steps=``, ``epochs=``, ``seconds=`` for `clcourse.train.fit`.
    """
    torch.manual_seed(seed)
    if make_encoder is None:
        encoder = SmallCNN(in_channels=train.images.shape[1], width=32, out_dim=128)
    else:
        encoder = make_encoder()
    model = InBatchInfoNCE(
        encoder, projection_dim=projection_dim, hidden_dim=hidden_dim, temperature=temperature,
        hard_negative_beta=hard_negative_beta, debiased_tau_plus=debiased_tau_plus,
    )
    loader = ViewLoader(train, augment, batch_size=batch_size, seed=seed, device=device)
    with torch_threads(num_threads):
        history = fit(model, loader, lr=lr, weight_decay=weight_decay, schedule="cosine", device=device,
                      progress=progress, channels_last=channels_last, **budget)
        train_x, train_y = extract_features(model.encoder, train)
        test_x, test_y = extract_features(model.encoder, test)
    probe, probe_std, knn = evaluate_features(train_x, train_y, test_x, test_y, label_fractions)
    return NegativesRun(name, hard_negative_beta, debiased_tau_plus, probe, probe_std, knn, history, model)


def evaluate_features(
    train_x, train_y, test_x, test_y, label_fractions: dict[str, float | None] | None = None,
) -> tuple[dict[str, float], dict[str, float], float]:
    """The evaluation of :func:`train_and_evaluate`, for any frozen features (raw pixels, an untrained encoder).

    Args:
        train_x [N, ...], train_y [N], test_x [M, ...], test_y [M]: features (flattened to [N, D]) and labels.
        label_fractions: name -> fraction of the training labels (None: all), default
            ``{"10%": 0.1, "100%": None}``; a fraction is averaged over 5 label draws.

    Returns:
        ``(probe, probe_std, knn)``: name -> linear-probe accuracy in [0, 1], name -> its standard deviation
        over the label draws, and the weighted kNN accuracy (k = 20, all labels).
    """
    label_fractions = {"10%": 0.1, "100%": None} if label_fractions is None else label_fractions
    train_x, test_x = torch.as_tensor(train_x).flatten(1).float(), torch.as_tensor(test_x).flatten(1).float()
    probe, probe_std = {}, {}
    for label, fraction in label_fractions.items():
        seeds = range(5) if fraction is not None else (0,)
        result = linear_probe(train_x, train_y, test_x, test_y, label_fraction=fraction, seeds=seeds)
        probe[label], probe_std[label] = result.mean, result.std
    return probe, probe_std, knn_accuracy(train_x, train_y, test_x, test_y)


@torch.no_grad()
def view_embeddings(
    model: SimCLR,
    images: Tensor,
    augment: Callable[..., Tensor],
    *,
    seed: int = 0,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """Projections (what the loss sees) of two augmented views of every image: images [M, C, H, W] -> two [M, D].

    The model runs in eval mode; the views are drawn from a generator seeded with `seed`, so two
    models given the same seed see the same views. Returns CPU float32 tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    views = []
    with eval_mode(model):
        for _ in range(2):
            parts = []
            for i in range(0, len(images), batch_size):
                x = augment(images[i : i + batch_size].to(device), generator=generator)
                parts.append(model.project(x).float().cpu())
            views.append(torch.cat(parts))
    return views[0], views[1]
