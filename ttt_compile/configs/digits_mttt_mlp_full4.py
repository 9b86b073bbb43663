"""Digits results table, layer `mttt_mlp` (steps=4, batching="full"); the shared recipe is in _digits_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._digits_base import table_config


def get_config() -> Config:
    return table_config("digits_mttt_mlp_full4", "mttt_mlp", steps=4, batching="full")
