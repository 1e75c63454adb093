"""NNCLR: the positive of a view is the nearest neighbour of its projection among recently seen images.

SimCLR's positive for a view is another augmentation of the same image. NNCLR [1] replaces it by the
*nearest neighbour* of that view's projection in a *support set* Q, a FIFO queue of the (L2-normalised,
detached) projections of recent batches: NN(z, Q) = argmin_{q in Q} |z - q| ([1] eq. 4), on unit vectors the
q with the largest cosine z . q. The neighbour is usually another image, so a positive pair spans variation
that no augmentation produces (another dodo, not the same dodo cropped).

One step of [1]'s Algorithm 1, for a batch of N images with views x1, x2:

1. projections z_v = g(f(x_v)) and predictions p_v = h(z_v) (h: a prediction MLP, as in BYOL);
2. neighbours NN_v = NN(z_v, Q), without gradient (they are entries of the queue);
3. loss = (L(NN_1, p_2) + L(NN_2, p_1)) / 2 with L [1] eq. 3 (predictions p in place of z^+):

       L(nn, p) = mean_i  -log( exp(nn_i . p_i / t) / sum_k exp(nn_i . p_k / t) ),

   the denominator running over the *predictions* of the other view
   (:func:`clcourse.losses.paired_info_nce`);
4. after the loss, the support set takes z_1 (detached), replacing the oldest rows.

So the lookup of a step never finds that step's own projections, and no gradient reaches the support set.

Before the support set holds anything. [1] does not say how its queue starts; LightlySSL's NNMemoryBankModule
and solo-learn start with random unit vectors, so for the first Q / N steps their positives are noise. Here
a fill counter keeps the lookup to the rows that hold real projections, and on the first step, when there
are none, a projection is its own positive (that step is SimCLR's InfoNCE of z against p).

[1] Dwibedi et al., With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of Visual
    Representations (NNCLR), ICCV 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.distributed import all_gather_cat
from clcourse.encoders import ProjectionHead
from clcourse.losses import _outside_autocast, paired_info_nce
from clcourse.methods.base import Method, views_and_labels


class NNCLR(Method):
    """Encoder + projection head + prediction head, trained with nearest neighbours as positives [1].

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        projection_dim: D, the size of z, p and the support set's rows (256 in [1]).
        hidden_dim: hidden width of the projection head (default: the encoder's out_dim; 2048 in [1]).
        head_layers: Linear layers in the projection head (3 in [1]; 2 in LightlySSL's CIFAR-10 entry).
        prediction_hidden_dim: hidden width of the prediction head (default: 4 * D; 4096 in [1]).
        prediction_layers: Linear layers in the prediction head: 2 = [1]'s MLP (Linear-BN-ReLU-Linear),
            1 = linear, 0 = none (p = z, [1]'s ablation without a predictor).
        support_size: Q, the rows of the support set (98,304 in [1] on ImageNet); keep it well above the
            number of classes, so that every class has projections in it.
        temperature: t > 0 (0.1 in [1]).
        gather_distributed: on several processes, every anchor is contrasted against the predictions of
            all processes, and the support set takes the projections of all of them (in process order), so
            every process holds the same support set and training equals one process on the global batch.

    Attributes:
        predictor: the prediction head h, [B, D] -> [B, D].
        support_set: buffer [Q, D] of unit projections, written in FIFO order; support_ptr: buffer, the
            row the next projection overwrites (the oldest once full); support_filled: buffer, how many
            rows hold real projections (the lookup searches only those). All three are in ``state_dict()``,
            so a resumed run continues exactly.

    A batch is ``(views, labels)`` with ``views = [x1, x2]``, each [B, C, H, W]; labels are ignored.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        head_layers: int = 2,
        prediction_hidden_dim: int | None = None,
        prediction_layers: int = 2,
        support_size: int = 4096,
        temperature: float = 0.1,
        gather_distributed: bool = False,
    ):
        checked = [("support_size", support_size, 1), ("prediction_layers", prediction_layers, 0)]
        if prediction_hidden_dim is not None:
            checked.append(("prediction_hidden_dim", prediction_hidden_dim, 1))
        for name, value, least in checked:
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim, num_layers=head_layers)
        super().__init__(encoder, head, temperature=temperature, gather_distributed=gather_distributed)
        dim = self.projector.out_dim
        self.predictor = ProjectionHead(dim, hidden_dim=prediction_hidden_dim or 4 * dim, out_dim=dim,
                                        num_layers=prediction_layers)
        self.register_buffer("support_set", torch.zeros(support_size, dim))
        self.register_buffer("support_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("support_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    @_outside_autocast  # similarities in the support set's precision, not autocast's float16
    def nearest_neighbours(self, z: Tensor) -> Tensor:
        """NN(z, Q) [1] (eq. 4): for each projection z [B, D], the unit support-set row of largest cosine
        similarity, [B, D], without gradient. Only filled rows are searched; while none is filled, z / |z|."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.support_set.shape[1]:
            raise ValueError(f"nearest_neighbours expects projections [B, {self.support_set.shape[1]}], "
                             f"got {list(z.shape) if isinstance(z, Tensor) else type(z).__name__}")
        z = F.normalize(z.detach().to(self.support_set), dim=1)
        support = self.support_set[: int(self.support_filled)]
        if support.shape[0] == 0:
            return z
        return support[(z @ support.t()).argmax(dim=1)]

    @torch.no_grad()
    def update_support_set(self, z: Tensor) -> None:
        """Write the unit projections z [B, D] over the oldest rows of the support set [Q, D] (FIFO, wrapping
        around its end; of more than Q rows only the last Q stay); advance the pointer and the fill count."""
        q, n = self.support_set.shape[0], z.shape[0]
        z = F.normalize(z.detach().to(self.support_set), dim=1)[-q:]
        rows = (self.support_ptr + max(n - q, 0) + torch.arange(z.shape[0], device=z.device)) % q
        self.support_set[rows] = z
        self.support_ptr.copy_((self.support_ptr + n) % q)
        self.support_filled.copy_(torch.clamp(self.support_filled + n, max=q))

    def training_step(self, batch) -> Tensor:
        """NNCLR's loss of one batch ``(views, labels)``, views = [x1, x2] each [B, C, H, W]; returns a scalar.

        The neighbours of both views are looked up before the support set takes this batch's z1.
        """
        (x1, x2), _ = views_and_labels(batch, "NNCLR", n_views=2)
        # One pass over both views, so batch norm sees one batch, as in SimCLR.
        z1, z2 = self.project(torch.cat([x1, x2])).chunk(2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        nn1, nn2 = self.nearest_neighbours(z1), self.nearest_neighbours(z2)
        gather = bool(self.gather_distributed)
        loss = (paired_info_nce(nn1, p2, self.temperature, gather_distributed=gather)
                + paired_info_nce(nn2, p1, self.temperature, gather_distributed=gather)) / 2
        self.update_support_set(all_gather_cat(z1.detach()) if gather else z1)
        return loss
