"""2-D projections of embeddings with UMAP [McInnes et al., UMAP, 2018].

``import umap`` costs about 14 s cold and the first fit in a process another
~12 s (numba compiles), so umap-learn is imported inside :func:`umap_2d`:
importing :mod:`clcourse.viz` stays cheap, and a lesson pays the cost once,
when it projects for the first time.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("cosine", "euclidean", "correlation", "manhattan")


def umap_2d(
    features: torch.Tensor | np.ndarray,
    seed: int = 0,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
) -> np.ndarray:
    """Project features to 2-D with UMAP; the same seed gives the same layout.

    Args:
        features: [N, D] embeddings (tensor on any device, or array), N >= 4.
        seed: random state of UMAP. Fixing it also makes UMAP run single-threaded,
            which is what makes the layout reproducible.
        n_neighbors: size of the neighbourhood UMAP preserves (capped at N - 1).
        min_dist: how tightly points may pack in the layout.
        metric: ``"cosine"`` by default, because contrastive embeddings are compared
            by cosine similarity (the losses normalise them), so their length is
            meaningless.

    Returns:
        [N, 2] float32 numpy array of coordinates.

    Cost: the first call in a process takes ~25 s cold (import + numba compile);
    later calls take ~3 s for 1,800 x 128 features on 2 CPU cores.

    [1] McInnes, Healy & Melville, UMAP: Uniform Manifold Approximation and
    Projection for Dimension Reduction, 2018.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] < 4:
        raise ValueError(f"features must have shape [N, D] with N >= 4, got {list(features.shape)}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf; a diverged model cannot be projected")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")

    try:
        import umap  # lazy: ~14 s cold, see the module docstring
    except ImportError as error:
        raise ImportError("umap_2d needs umap-learn: pip install umap-learn") from error

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, features.shape[0] - 1),
        min_dist=min_dist,
        metric=metric,
        random_state=int(seed),
        n_jobs=1,  # what random_state forces anyway; saying it silences UMAP's warning
    )
    # The first fit in a process starts numba's OpenMP threads, which resets the OpenMP thread
    # count that torch shares (torch.set_num_threads(1) reads 2 afterwards on 2 cores): put it back.
    threads = torch.get_num_threads()
    try:
        return reducer.fit_transform(features).astype(np.float32)
    finally:
        torch.set_num_threads(threads)
