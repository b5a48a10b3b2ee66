"""Inference backends: each a Runner with the same small interface (see `base.Runner`)."""
