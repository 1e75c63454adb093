"""Helpers of individual lessons: experiment code too long for a notebook cell, one module per lesson."""
