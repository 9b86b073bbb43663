"""Table 1 of Sun et al. (2023): ViT-S/16 on ImageNet-1k, 90 epochs, the recipe of Beyer et al.
(2022), "Better plain ViT baselines for ImageNet-1k", with the attention layer swapped.

Recipe: 224x224 inception (random-resized) crops of area 5%..100% and left-right flips,
RandAugment(2 layers, magnitude 10), mixup (alpha 0.2); global average pooling, fixed 2-d sin-cos
position embeddings, zero-initialised head; batch 1024, AdamW (b1 0.9, b2 0.999, decoupled weight
decay 1e-4, first moment in bfloat16), peak lr 1e-3 with 10k linear warmup steps then cosine decay
to 0, gradient clipping at global norm 1, no dropout.

The Table 1 rows differ only in ``layer``: self_attention, linear_attention (feature_map identity
or elu1), mttt_linear, mttt_mlp. Give the data folder with ``--data imagenet:DIR`` (DIR holding
``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``).

    ttt-compile train vit_s16_imagenet --data imagenet:/data/imagenet
"""

from ttt_compile.configs import Config


def get_config() -> Config:
    return Config(
        name="vit_s16_imagenet",
        data="imagenet:~/imagenet",
        image_size=224,
        crop_area_min=0.05,
        flip=True,
        randaugment=(2, 10),
        mixup=0.2,
        data_threads=16,
        data_workers=8,
        vit="S",
        patch=16,
        posemb="sincos2d",
        layer="mttt_mlp",
        layer_options={"steps": 1, "batching": "full"},
        passes="default",
        batch_size=1024,
        eval_batch_size=1024,
        epochs=90,
        steps=None,
        lr=1e-3,
        weight_decay=1e-4,
        warmup_steps=10_000,
        b1=0.9,
        b2=0.999,
        grad_clip=1.0,
        dtype="bfloat16",
        log_every=50,
        eval_every=5_000,
        checkpoint_every=1_000,
        keep_checkpoints=3,
    )
