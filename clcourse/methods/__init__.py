"""Contrastive learning frameworks, one module each (see COURSE.md)."""

from clcourse.methods.moco import MoCo
from clcourse.methods.simclr import SimCLR
from clcourse.methods.supcon import SupCon, unlabelled_as_own_class
from clcourse.methods.triplet import Triplet

__all__ = ["MoCo", "SimCLR", "SupCon", "Triplet", "unlabelled_as_own_class"]
