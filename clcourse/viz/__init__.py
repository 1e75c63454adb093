"""Visualisation: UMAP projections, embedding and augmentation plots, the embedding explorer widget, and sentences
coloured by a weight per word.

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
from .text import highlighted_sentences

__all__ = [
    "EmbeddingExplorer",
    "ExplorerState",
    "embedding_explorer",
    "explore_embeddings",
    "highlighted_sentences",
    "image_grid",
    "plot_embedding",
    "show_views",
    "umap_2d",
]
