# Fine-tune CSPResNet-50 from its published ImageNet weights on your own classes (one GPU, 32 images per step).
#
# Data: one folder per class (any names; labels follow their sorted order unless `classes` is given):
#   data/custom/train/<class>/*.jpg     data/custom/val/<class>/*.jpg
# Run (the number of classes and their names come from the train folders):
#   python tools/train.py configs/cspnet/cspresnet50_finetune_custom.py --cfg-options data_root=/path/to/my_data
#   torchrun --nproc-per-node 4 tools/train.py configs/cspnet/cspresnet50_finetune_custom.py --launcher pytorch \
#       --auto-scale-lr                          # lr x4 for 4 GPUs x 32 images (base 32)
# Each run writes into its own folder, work_dirs/cspresnet50_finetune_custom/<YYYYmmdd_HHMMSS>/. Then, with the
# weights its best epoch chose (best.safetensors: its classes and preprocessing come with it):
#   cspnet predict IMAGE --weights work_dirs/cspresnet50_finetune_custom/<run>/best.safetensors
#   python tools/test.py configs/cspnet/cspresnet50_finetune_custom.py work_dirs/.../<run>/best.pth
#   cspnet export --weights work_dirs/.../<run>/best.safetensors --output model.onnx
_base_ = ['./cspresnet50_8xb32_in1k.py']

# Start from the published weights (True), or a file/URL in any layout (timm, mmpretrain or cspnet). Everything is
# loaded except the 1000-class head, which is replaced by a fresh one sized to your classes. Offline: a file here,
# or put the published file in $CSPNET_WEIGHTS_DIR.
load_from = True

# one root for the train, val and test sets (--cfg-options data_root=... moves all three)
data_root = 'data/custom'

model = dict(
    # freeze the stem and stages 0-1 (weights fixed, BatchNorms in eval mode); -1 trains everything
    backbone=dict(frozen_stages=1),
    head=dict(
        num_classes=None,  # None: the number of class folders (a number here must match them)
        # label smoothing usually helps small datasets; dict(type='CrossEntropyLoss') for plain cross-entropy
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1),
    ),
    # Mixup / CutMix (one of them per batch, at random), as mmpretrain's recipes:
    # train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

# the head decides the class count (the base's 1000 here would only size Mixup's one-hot labels)
data_preprocessor = dict(num_classes=None)

# The base ImageNet pipelines stay: train RandomResizedCrop 224 + flip, test short edge 288 -> centre crop 256. For
# more augmentation (timm's RA recipe) add after RandomFlip in train_dataloader.dataset.pipeline:
#   dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
#        magnitude_std=0.5, hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
#   dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
#        fill_color=[103.53, 116.28, 123.675], fill_std=[57.375, 57.12, 58.395]),
_data = dict(type='CustomDataset')  # (names starting with _ are not config keys)
train_dataloader = dict(batch_size=32, dataset=dict(_data, data_prefix='train'))  # workers: min(4, CPU cores)
val_dataloader = dict(batch_size=32, dataset=dict(_data, data_prefix='val'))
test_dataloader = val_dataloader
# classes=['cat', 'dog', ...] (or a text file, one name per line) in each dataset dict fixes the label order.

# SGD with a 10x smaller lr than training from scratch, no weight decay on BatchNorm and biases.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    # clip_grad=dict(max_norm=5.0),                       # if the loss spikes
    # type='AmpOptimWrapper', dtype='bfloat16',           # mixed precision (or pass --amp)
)
auto_scale_lr = dict(base_batch_size=32)  # --auto-scale-lr: lr x (GPUs x batch_size) / 32

# 1 epoch of linear warmup (per iteration), then cosine decay to 0 over the remaining 29.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=30, eta_min=0.0),
]
train_cfg = dict(by_epoch=True, max_epochs=30, val_interval=1)

# EMA of the weights, evaluated next to the raw weights (ema_top1 in the log); best.pth is the better of the two
# (on few steps the EMA lags behind), and every command then uses those weights by default (--ema / --no-ema).
custom_hooks = [dict(type='EMAHook', momentum=1e-3, update_buffers=True)]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # plus best.pth; save_optimizer=False makes each checkpoint a third of the size (but it cannot be resumed)
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
)
# TensorBoard too (pip install tensorboard): scalars in <run>/vis_data
# visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
env_cfg = dict(channels_last=True)  # NHWC: faster convolutions on recent GPUs, mostly with mixed precision
randomness = dict(seed=0, deterministic=False)
