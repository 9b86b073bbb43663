"""Table 3 of Sun et al. (2023): ViT-Tiny on raw 224x224 ImageNet pixels, every pixel a token
(patch size 1, n = 224 * 224 = 50176 tokens), learned position embeddings.

Augmentation: random-resized crop only (no flip, RandAugment or mixup). Optimisation as in
``vit_s16_imagenet`` (batch 1024, AdamW, lr 1e-3, decoupled decay 1e-4, 10k warmup, cosine,
90 epochs). Self-attention over 50176 tokens does not fit in memory, which is the point of the
table: the linear-complexity layers (linear_attention, mttt_linear, mttt_mlp) do.

Each image carries 50176 x 192 activations per block, so batch 1024 needs many accelerators;
on fewer, lower ``batch_size`` (and ``lr`` in proportion) in a copy of this file.
``remat_budget="auto"``: the compiler chooses each layer's token chunk and remat schemes so that the
layers' training-step memory fits half of the device's memory (no chunk size to tune by hand).

    ttt-compile train vit_ti_pixels_imagenet --data imagenet:/data/imagenet
"""

from ttt_compile.configs import Config


def get_config() -> Config:
    return Config(
        name="vit_ti_pixels_imagenet",
        data="imagenet:~/imagenet",
        image_size=224,
        crop_area_min=0.05,
        flip=False,
        randaugment=None,
        mixup=0.0,
        data_threads=16,
        data_workers=8,
        vit="Ti",
        patch=1,
        posemb="learn",
        layer="mttt_mlp",
        layer_options={"steps": 1, "batching": "full"},
        passes="default",
        remat_budget="auto",  # the compiler plans each layer's memory (token chunk, remat) for the device
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
