"""PCL: contrast each image with its instance (MoCo) and with the prototypes of the clusters it falls in.

Instance discrimination treats every other image as a negative, even one of the same kind. Prototypical
Contrastive Learning [1] adds *prototypes*, the centroids of k-means clusters of the whole training set, as
latent variables of an EM algorithm (section 3, Algorithm 1):

- **E-step** (:meth:`PCL.e_step`, at the start of every epoch after a warm-up): encode every training image
  with the momentum (key) encoder, L2-normalise, and run k-means at several granularities M_1, ..., M_G
  (25,000 / 50,000 / 100,000 clusters on ImageNet). Each cluster gives a prototype c (its centroid,
  normalised) and a *concentration* phi ([1] eq. 12, :func:`clcourse.clustering.concentration`): the mean
  distance of its members to the centroid over log(Z + alpha), so loose clusters get a high temperature and
  tight ones a low one; phi is scaled to a mean equal to the temperature t.
- **M-step** (:meth:`PCL.training_step`): ProtoNCE ([1] eq. 7) = MoCo's InfoNCE (query vs its key and the
  queue) + the mean over granularities of the prototype term (:func:`clcourse.losses.proto_nce`, [1] eq. 6):
  the query's similarity to its own prototype over phi, against r negative prototypes.

For the first epochs there are no prototypes worth the name, so PCL trains with InfoNCE alone (a warm-up of 20
of 200 epochs in [1]); until the first E-step, PCL *is* MoCo.

Where the paper and its code [2] differ, the code is followed, and the docstrings say so: the singletons'
concentration (the largest of the others), phi clamped to its 10th-90th percentile before the rescale, the
distances measured to the k-means means before they are normalised, and k-means seeded per granularity.
One deliberate difference from the code: its candidate prototypes for image i are the batch's own prototypes
(one per image, so the image's own prototype appears again as a "negative" for every other image of its
cluster in the batch) followed by r shared draws from the prototypes no image of the batch belongs to; here
they are exactly [1] eq. 6's, the own prototype and r others (at small M a batch covers every cluster, and
the code's construction would leave no negatives at all).

[1] Li et al., Prototypical Contrastive Learning of Unsupervised Representations (PCL), ICLR 2021.
[2] github.com/salesforce/PCL: pcl/builder.py (the loss), main_pcl.py (compute_features, run_kmeans).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse import clustering
from clcourse.checks import check_number
from clcourse.distributed import all_reduce_sum, rank, world_size
from clcourse.evaluate import extract_features
from clcourse.losses import _proto_nce
from clcourse.methods.base import views_and_labels
from clcourse.methods.moco import MoCo


class _Clustering(nn.Module):
    """One granularity's E-step result, as buffers: prototypes [M, D], concentration [M], assignments [N]."""

    def __init__(self, num_clusters: int, dim: int):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_clusters, dim))
        self.register_buffer("concentration", torch.ones(num_clusters))
        self.register_buffer("assignments", torch.zeros(0, dtype=torch.long))  # [N] once an E-step has run

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of images is known only once clustered: take the checkpoint's, then load as usual.
        saved = state_dict.get(prefix + "assignments")
        if isinstance(saved, Tensor):
            self.assignments = torch.zeros_like(saved, device=self.assignments.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _KeyNetwork(nn.Module):
    """The key encoder and head as one network, inputs cast to its dtype (float16-stored images)."""

    def __init__(self, method: MoCo):
        super().__init__()
        self.encoder, self.projector = method.key_encoder, method.key_projector
        self.dtype = next(method.key_encoder.parameters(), torch.empty(0)).dtype
        self.train(method.key_encoder.training)  # so that extract_features gives the encoder its own mode back

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x.to(self.dtype)))


class PCL(MoCo):
    """Prototypical Contrastive Learning [1]: MoCo plus prototypes from k-means of the whole training set.

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim]; the query encoder, kept as ``.encoder``.
        moco_options: MoCo's keyword arguments (:class:`~clcourse.methods.MoCo`: projection_dim, hidden_dim,
            head_layers, queue_size, momentum, temperature, shuffle_bn_groups, shuffle_keys, symmetric,
            generator, gather_distributed), with MoCo's defaults. ``temperature`` t is also the mean of every
            clustering's concentrations; ``generator`` also draws the negative prototypes.
        num_clusters: the granularities M_1, ..., M_G, each an int >= 2 (25,000, 50,000, 100,000 on
            ImageNet in [1]); each must be below the number of training images.
        warmup_epochs: epochs trained with InfoNCE alone; the E-step runs at the start of every later epoch
            (:meth:`on_epoch_start`), as in [1]'s code (20 in [1]). 0 clusters the untrained network's
            features before the first epoch.
        num_negative_prototypes: r, the negative prototypes of each image per granularity (16,000 in [1], the
            code's default 16,384); None (or r >= M - 1): all the other prototypes.
        alpha: > 0, the concentration's smoothing constant (10 in [1]).
        kmeans_restarts, kmeans_iterations: k-means runs per E-step (the best kept) and Lloyd iterations per
            run ([1]'s code: 5 and 20 with faiss).
        kmeans_seed: granularity g's k-means is seeded with ``kmeans_seed + g`` at every E-step (the code seeds
            it with g), so the same features give the same clusters, in every process and after a resume.

    With ``gather_distributed`` (MoCo's: the keys of every process enqueued) the E-step is computed by rank 0
    and sent to the others, so every process holds the same prototypes.

    Attributes:
        clusterings: one module per granularity with buffers ``prototypes`` [M, D] (unit centroids),
            ``concentration`` [M] (phi) and ``assignments`` [N] (each training image's cluster; empty
            until the first E-step). They are in ``state_dict()``, so a checkpoint keeps the E-step.
        training_images: the un-augmented training images [N, C, H, W] the E-step encodes (not in the
            state dict), set by :meth:`attach_dataset`.

    A batch is ``(views, index)``: ``views = [x_q, x_k]``, each [B, C, H, W], and ``index`` int [B], each
    image's row in the training set, where other methods have labels, as in [1]'s code. Build the loader
    over ``method.attach_dataset(train)``, the training images labelled ``0..N-1``
    (``ImageData(images, torch.arange(N))``); :func:`clcourse.recipes.build` does. Repeated values in a
    batch are refused: class labels would otherwise pass for indices.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_clusters: Sequence[int] = (25, 50, 100),
        warmup_epochs: int = 20,
        num_negative_prototypes: int | None = None,
        alpha: float = 10.0,
        kmeans_restarts: int = 1,
        kmeans_iterations: int = 20,
        kmeans_seed: int = 0,
        **moco_options,
    ):
        if isinstance(num_clusters, (str, bytes)) or not isinstance(num_clusters, Sequence) or not num_clusters \
                or any(not isinstance(m, int) or isinstance(m, bool) or m < 2 for m in num_clusters):
            raise ValueError(f"num_clusters must be a non-empty sequence of ints >= 2 (one per granularity), "
                             f"got {num_clusters!r}")
        checked = [("warmup_epochs", warmup_epochs, 0), ("kmeans_restarts", kmeans_restarts, 1),
                   ("kmeans_iterations", kmeans_iterations, 1), ("kmeans_seed", kmeans_seed, 0)]
        if num_negative_prototypes is not None:
            checked.append(("num_negative_prototypes", num_negative_prototypes, 1))
        for name, value, least in checked:
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        super().__init__(encoder, **moco_options)
        self.num_clusters = tuple(num_clusters)
        self.warmup_epochs = warmup_epochs
        self.num_negative_prototypes = num_negative_prototypes
        self.alpha = check_number("alpha", alpha)
        self.kmeans_restarts, self.kmeans_iterations, self.kmeans_seed = kmeans_restarts, kmeans_iterations, kmeans_seed
        self.clusterings = nn.ModuleList(_Clustering(m, self.projector.out_dim) for m in self.num_clusters)
        self.training_images: Tensor | None = None

    # ----------------------------------------------------------------------------------------- data

    def attach_dataset(self, data):
        """Keep the un-augmented training images for the E-step; return the dataset to train on.

        Args:
            data: an :class:`~clcourse.data.ImageData` or images [N, C, H, W] (floating point; float16-stored
                sets are encoded in the network's precision).

        Returns:
            ``ImageData(images, torch.arange(N))``: the same images, each labelled with its index, so a
            :class:`~clcourse.data.ViewLoader` over it yields the ``(views, index)`` batches PCL trains on.
        """
        from clcourse.data import ImageData

        images = data.images if isinstance(data, ImageData) else data
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point() or not len(images):
            got = f"{images.dtype} of shape {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"attach_dataset expects an ImageData or floating-point images [N, C, H, W] with N >= 1, "
                             f"got {got}")
        self.training_images = images
        return ImageData(images, torch.arange(images.shape[0]))

    @property
    def clustered(self) -> bool:
        """Whether an E-step has run: from then on ``training_step`` adds the prototype term."""
        return self.clusterings[0].assignments.numel() > 0

    def _indices(self, index, batch: int) -> Tensor:
        """Check the batch's image indices: int [B], distinct, within the training set."""
        if not isinstance(index, Tensor) or index.shape != (batch,) or index.is_floating_point():
            got = f"{index.dtype} of shape {list(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
            raise ValueError(f"PCL needs each image's index in the training set where the labels go, an integer "
                             f"tensor [{batch}]: train on method.attach_dataset(train) (ImageData(images, "
                             f"torch.arange(N))); got {got}")
        if batch < 1:
            raise ValueError("PCL needs at least one image per batch, got an empty batch")
        n = self.clusterings[0].assignments.shape[0] if self.clustered else (
            None if self.training_images is None else self.training_images.shape[0])
        ordered = index.detach().sort().values
        # one read from the device for the three checks
        low, high, repeated = torch.stack([ordered[0], ordered[-1], (ordered[1:] == ordered[:-1]).sum()]).tolist()
        if repeated:
            raise ValueError(f"the image indices of a batch must be distinct, got {repeated} repeated: these "
                             "look like class labels; PCL's batches carry each image's row in the training set "
                             "(method.attach_dataset(train))")
        if low < 0 or (n is not None and high >= n):
            raise ValueError(f"image indices must lie in [0, {n if n is not None else 'N'}) (rows of the training "
                             f"set), got {low}..{high}")
        return index

    # ----------------------------------------------------------------------------------------- E-step

    @torch.no_grad()
    def momentum_features(self, images: Tensor | None = None, batch_size: int = 512) -> Tensor:
        """The key encoder's L2-normalised projections of ``images`` [N, C, H, W] (default: the attached
        training images): [N, D] float32 on the CPU, in eval mode (batch norm with its running statistics),
        as [1]'s code computes the features it clusters (``compute_features``)."""
        if images is None:
            if self.training_images is None:
                raise ValueError("PCL's E-step clusters the whole training set: call method.attach_dataset(train) "
                                 "first, or pass the features to e_step(features)")
            images = self.training_images
        features, _ = extract_features(_KeyNetwork(self), images, batch_size=batch_size)
        return F.normalize(features, dim=1)

    @torch.no_grad()
    def e_step(self, features: Tensor | None = None) -> None:
        """[1]'s E-step: k-means of the training set's momentum features at every granularity (Algorithm 1).

        For each M_g: k-means (seed ``kmeans_seed + g``), the concentration phi of every cluster
        (:func:`clcourse.clustering.concentration`: distances to the un-normalised centroids, singletons at
        the largest phi, clamp to the 10th-90th percentile, mean t), then the centroids normalised into
        prototypes; all kept in ``clusterings``.

        Args:
            features: [N, D], row i the momentum feature of training image i (L2-normalised here); None: computed
                by :meth:`momentum_features` from the attached images.

        With ``gather_distributed`` on several processes, rank 0 computes everything and the others receive
        it (a sum with their zeros, as [1]'s code broadcasts it), so every process holds the same prototypes.
        """
        dim = self.clusterings[0].prototypes.shape[1]
        device = self.clusterings[0].prototypes.device
        share = bool(self.gather_distributed) and world_size() > 1
        if features is None and self.training_images is None:
            self.momentum_features()  # raises the error that says what to do
        if features is None:
            n = self.training_images.shape[0]
        else:
            if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != dim \
                    or not features.is_floating_point():
                got = f"{features.dtype} of shape {list(features.shape)}" if isinstance(features, Tensor) \
                    else type(features).__name__
                raise ValueError(f"features must be a floating-point tensor [N, {dim}] (one momentum feature per "
                                 f"training image), got {got}")
            n = features.shape[0]
            if self.training_images is not None and n != self.training_images.shape[0]:
                raise ValueError(f"features must have one row per training image ({self.training_images.shape[0]}), "
                                 f"got {n}")
        too_many = [m for m in self.num_clusters if m >= n]
        if too_many:
            raise ValueError(f"PCL clusters the {n} training images into {list(self.num_clusters)} clusters; "
                             f"{too_many} are not fewer than the images: use smaller num_clusters")
        results = []
        for g, (m, clusters) in enumerate(zip(self.num_clusters, self.clusterings)):
            if share and rank() != 0:
                out = (torch.zeros(m, dim), torch.zeros(m, dtype=torch.float64), torch.zeros(n, dtype=torch.long))
            else:
                if g == 0:
                    features = self.momentum_features() if features is None else F.normalize(
                        features.detach().cpu().float(), dim=1)
                centroids, assignments = clustering.kmeans(features, m, seed=self.kmeans_seed + g,
                                                           n_init=self.kmeans_restarts,
                                                           max_iter=self.kmeans_iterations)
                phi = clustering.concentration(features, centroids, assignments, self.temperature, self.alpha)
                out = (F.normalize(centroids.float(), dim=1), phi, assignments)
            out = [x.to(device) for x in out]
            if share:
                out = [all_reduce_sum(x) for x in out]
            results.append(out)
        for clusters, (prototypes, phi, assignments) in zip(self.clusterings, results):
            clusters.prototypes.copy_(prototypes)
            clusters.concentration.copy_(phi)
            clusters.assignments = assignments

    def on_epoch_start(self, epoch: int) -> None:
        """The E-step at the start of every epoch from ``warmup_epochs`` on (epochs counted from 0), as [1]'s code."""
        if epoch >= self.warmup_epochs:
            self.e_step()

    # ----------------------------------------------------------------------------------------- M-step

    def negative_prototypes(self, assignments: Tensor, num_prototypes: int) -> Tensor | None:
        """r negative prototypes for each image, none its own: [B, r] int, or None for all the others.

        One draw of r + 1 distinct prototypes per step, shared by the batch (as [1]'s code shares its r);
        each image drops its own prototype from it, or the last draw when its own is not there, so each
        image's r negatives are a uniform sample of the M - 1 others, without replacement.
        """
        r = self.num_negative_prototypes
        if r is None or r >= num_prototypes - 1:
            return None
        draw = torch.randperm(num_prototypes, generator=self.generator)[: r + 1].to(assignments.device)
        own = draw.unsqueeze(0) == assignments.unsqueeze(1)  # [B, r + 1], at most one True per row
        dropped = torch.where(own.any(dim=1), own.float().argmax(dim=1), r)
        keep = torch.ones_like(own)
        keep[torch.arange(len(assignments), device=keep.device), dropped] = False
        return draw.expand(len(assignments), -1)[keep].view(len(assignments), r)

    def prototype_loss(self, queries: Sequence[Tensor], index: Tensor) -> Tensor:
        """The prototype term of ProtoNCE ([1] eq. 7): :func:`~clcourse.losses.proto_nce` of the queries [B, D]
        against their images' prototypes (``index`` int [B], rows of the training set), averaged over the
        granularities (and over both queries when ``symmetric``)."""
        terms = []
        for clusters in self.clusterings:
            assignments = clusters.assignments[index]
            for q in queries:
                negatives = self.negative_prototypes(assignments, clusters.prototypes.shape[0])
                terms.append(_proto_nce(q, clusters.prototypes, clusters.concentration, assignments, negatives))
        return torch.stack(terms).mean()

    def training_step(self, batch) -> Tensor:
        """ProtoNCE of one batch ``(views, index)``, views = [x_q, x_k] each [B, C, H, W]; returns a scalar.

        MoCo's InfoNCE (momentum update, keys, queue), plus the prototype term once an E-step has run.
        """
        (x_q, x_k), index = views_and_labels(batch, "PCL", n_views=2)
        index = self._indices(index, x_q.shape[0])
        loss, queries = self.contrast(x_q, x_k)
        if self.clustered:
            loss = loss + self.prototype_loss(queries, index)
        return loss
