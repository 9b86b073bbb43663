"""The declarative layer: what a user writes.  `spec` (Inner, Reconstruction), `learners` (f(z; W)),
`outer_maps` (phi, psi, g, h), `inner_steps` (the loss and one inner step as pure functions) and
`ttt_layer` (TTTLayer, the reference semantics); `released` loads the released MTTT code's layer,
`ttt_lm_jax` the follow-up paper's TTT-Linear/MLP (test-time-training/ttt-lm-jax)."""

from . import learners, released, spec, ttt_lm_jax
from .inner_steps import batch_step, online_step, reconstruction_loss, token_loss
from .outer_maps import Decoder, Output, Project, StepSize, decode
from .spec import Inner, MultiView, Readout, Reconstruction, SequenceMaps, SpecError
from .ttt_layer import TTTLayer, check_tokens

__all__ = [
    "learners",
    "released",
    "ttt_lm_jax",
    "MultiView",
    "Readout",
    "SequenceMaps",
    "spec",
    "StepSize",
    "Inner",
    "Reconstruction",
    "SpecError",
    "TTTLayer",
    "check_tokens",
    "Decoder",
    "Output",
    "Project",
    "decode",
    "batch_step",
    "online_step",
    "reconstruction_loss",
    "token_loss",
]
