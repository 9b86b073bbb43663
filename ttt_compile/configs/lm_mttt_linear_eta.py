"""LM row (benchmarks/results/online/lm_learned_eta.md): MTTT-Linear, online chunks of 16, with a learned
per-token inner step eta_k(x) = 0.006 sigmoid(theta_k . x + b_k), starting at 0.003; recipe in _lm_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._lm_base import lm_config


def get_config() -> Config:
    return lm_config(
        "lm_mttt_linear_eta",
        "mttt_linear",
        batching="online",
        chunk=16,
        lr=1.0,
        parametrisation="paper",
        eta="per_token",
        eta_base=0.006,
    )
