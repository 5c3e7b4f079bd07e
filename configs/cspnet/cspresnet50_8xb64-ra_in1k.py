# CSPResNet-50 on ImageNet-1k with the parts of timm's RandAugment ("RA") recipe, the one behind the published
# weights: RandAugment rand-m9-mstd0.5-inc1, random erasing (25%, per-pixel noise), RMSpropTF (TF-style epsilon),
# EMA of the weights, label smoothing 0.1, on top of cspresnet50_8xb64-cos-ls-ema_in1k.py's cosine schedule, bf16,
# channels_last and SyncBN. timm decayed the lr stepwise (x0.97 every 2.4 epochs over ~450 epochs); the cosine here
# is a shorter stand-in. This recipe has not been run to completion here: expect to tune lr and epochs.
#
#   torchrun --nproc-per-node 8 tools/train.py configs/cspnet/cspresnet50_8xb64-ra_in1k.py --launcher pytorch
_base_ = ['./cspresnet50_8xb64-cos-ls-ema_in1k.py']

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    # timm's policy string, or mmpretrain's spelling of the same: policies='timm_increasing', magnitude_level=9,
    # magnitude_std=0.5; pad_val is BGR as in mmpretrain's configs (its images are BGR; ours RGB: it is reversed)
    dict(type='RandAugment', policies='rand-m9-mstd0.5-inc1', hparams=dict(pad_val=[104, 116, 124],
                                                                           interpolation='bicubic')),
    # timm's --reprob 0.25 --remode pixel: noise with the data's mean/std (BGR, as mmpretrain's configs)
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
         fill_color=[103.53, 116.28, 123.675], fill_std=[57.375, 57.12, 58.395]),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

# timm's rmsproptf: alpha (decay) 0.9, eps 1e-3 inside the square root, momentum 0.9; lr 0.016 per 256 images
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='RMSpropTF', lr=0.032, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
)
