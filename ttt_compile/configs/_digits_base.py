"""Shared recipe of the digits results table (``ttt-compile table digits``): one config per layer, all
else equal. A 2-block ViT (width 32, 2 heads) over raw pixels (n = 64 tokens), 600 steps of AdamW."""

from ttt_compile.configs import Config


def table_config(name: str, layer: str, **layer_options) -> Config:
    return Config(
        name=name,
        data="digits",
        image_size=8,
        vit="Ti",
        width=32,
        depth=2,
        heads=2,
        mlp_dim=64,
        patch=1,
        posemb="learn",
        layer=layer,
        layer_options=layer_options,
        passes="default",
        batch_size=64,
        eval_batch_size=360,
        steps=600,
        lr=3e-3,
        weight_decay=1e-4,
        warmup_steps=60,
        log_every=20,
        eval_every=100,
        checkpoint_every=300,
    )
