"""LM table row: causal linear attention (chunked, b = 16); recipe in _lm_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._lm_base import lm_config


def get_config() -> Config:
    return lm_config("lm_linear_attention", "linear_attention", chunk=16)
