"""LM table row: causal softmax attention (the reference); recipe in _lm_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._lm_base import lm_config


def get_config() -> Config:
    return lm_config("lm_self_attention", "self_attention")
