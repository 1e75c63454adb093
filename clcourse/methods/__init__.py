"""Contrastive learning frameworks, one module each (see COURSE.md)."""

from clcourse.methods.simclr import SimCLR

__all__ = ["SimCLR"]
