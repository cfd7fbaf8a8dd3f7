"""Evaluation helpers: metrics files, TensorBoard images, progress bars."""
