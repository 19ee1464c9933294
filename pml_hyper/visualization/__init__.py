"""Pictures of learned hierarchies (``pip install 'pml-hyper[viz]'``: matplotlib, umap-learn)."""

from .poincare_disk import poincare_disk, tree_links

__all__ = ["poincare_disk", "tree_links"]
