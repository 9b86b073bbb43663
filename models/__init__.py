"""Drop-in layers (attention baselines and TTT layers), ViT and causal LM models."""

from . import layers

__all__ = ["layers"]
