"""The declarative layer: what a user writes.  `spec` (Inner, Reconstruction), `learners` (f(z; W)),
`outer_maps` (phi, psi, g, h), `inner_steps` (the loss and one inner step as pure functions) and
`ttt_layer` (TTTLayer, the reference semantics)."""
from . import learners, spec
from .inner_steps import batch_step, online_step, reconstruction_loss, token_loss
from .outer_maps import Decoder, Output, Project, decode
from .spec import Inner, Reconstruction, SpecError
from .ttt_layer import TTTLayer, check_tokens

__all__ = ["learners", "spec", "Inner", "Reconstruction", "SpecError", "TTTLayer", "check_tokens", "Decoder",
           "Output", "Project", "decode", "batch_step", "online_step", "reconstruction_loss", "token_loss"]
