"""One outer-loop trainer for every task (image classification, causal LM, associative recall):
optax, orbax checkpoints, metrics and plots, sharding over a mesh, ``jax.distributed``.

    from ttt_compile.configs import load_config
    from ttt_compile.training import train
    train(load_config("digits_tiny"), workdir="runs/digits_tiny")
"""

from ttt_compile.training.checkpoints import CheckpointError, Checkpoints
from ttt_compile.training.metrics import TIMING_KEYS, plot, read_metrics
from ttt_compile.training.tasks import CompiledLayer, make_task, source_model
from ttt_compile.training.trainer import NonFiniteError, train

__all__ = [
    "train",
    "NonFiniteError",
    "Checkpoints",
    "CheckpointError",
    "read_metrics",
    "plot",
    "TIMING_KEYS",
    "make_task",
    "CompiledLayer",
    "source_model",
]
