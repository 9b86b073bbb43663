"""The quick start: a 2-block ViT over the 8x8 digits, every pixel a token (n = 64), with an
MTTT-Linear layer (the released parametrisation: inner loss / d_h, lr = 1 is eta = 1/d_h) compiled by the
default passes, evaluated every 20 steps so the inner-loss plot is a curve. About 20-30 s on a laptop CPU.

    ttt-compile train digits_tiny
"""

from ttt_compile.configs import Config


def get_config() -> Config:
    return Config(
        name="digits_tiny",
        data="digits",
        image_size=8,
        vit="Ti",
        width=32,
        depth=2,
        heads=2,
        mlp_dim=64,
        patch=1,
        posemb="learn",
        layer="mttt_linear",
        layer_options={},
        passes="default",
        batch_size=64,
        eval_batch_size=360,
        steps=300,
        lr=3e-3,
        weight_decay=1e-4,
        warmup_steps=30,
        log_every=10,
        eval_every=20,
        checkpoint_every=100,
    )
