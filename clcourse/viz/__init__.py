"""Visualisation: UMAP projections, embedding and augmentation plots, and the embedding explorer widget.

``umap_2d`` imports umap-learn only when called (the import costs ~14 s cold).
"""

from .explorer import (
    EmbeddingExplorer,
    ExplorerState,
    embedding_explorer,
    explore_embeddings,
)
from .plots import image_grid, plot_embedding, show_views
from .projection import umap_2d

__all__ = [
    "EmbeddingExplorer",
    "ExplorerState",
    "embedding_explorer",
    "explore_embeddings",
    "image_grid",
    "plot_embedding",
    "show_views",
    "umap_2d",
]
