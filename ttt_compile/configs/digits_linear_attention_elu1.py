"""Digits results table, layer `linear_attention` (feature_map="elu1"); the shared recipe is in _digits_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._digits_base import table_config


def get_config() -> Config:
    return table_config("digits_linear_attention_elu1", "linear_attention", feature_map="elu1")
