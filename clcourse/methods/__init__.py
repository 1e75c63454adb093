"""Contrastive learning frameworks, one module each on a shared base (docs/adding-a-method.md)."""

from clcourse.methods.barlow_twins import BarlowTwins
from clcourse.methods.base import Method, views_and_labels
from clcourse.methods.byol import BYOL
from clcourse.methods.clip import CLIP
from clcourse.methods.moco import MoCo
from clcourse.methods.nnclr import NNCLR
from clcourse.methods.ore import ORE
from clcourse.methods.pcl import PCL
from clcourse.methods.pcrl import PCRL
from clcourse.methods.pixel_contrast import PixelContrast
from clcourse.methods.simclr import SimCLR
from clcourse.methods.simcse import SimCSE
from clcourse.methods.simsiam import SimSiam
from clcourse.methods.sscl import SSCL
from clcourse.methods.supcon import SupCon, unlabelled_as_own_class
from clcourse.methods.swav import SwAV
from clcourse.methods.triplet import Triplet

__all__ = ["BYOL", "BarlowTwins", "CLIP", "Method", "MoCo", "NNCLR", "ORE", "PCL", "PCRL", "PixelContrast", "SSCL", "SimCLR", "SimCSE", "SimSiam", "SupCon", "SwAV", "Triplet", "unlabelled_as_own_class", "views_and_labels"]
