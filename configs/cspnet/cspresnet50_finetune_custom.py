# Fine-tune CSPResNet-50 from its published ImageNet weights on your own classes (one GPU, 32 images per step).
#
# Data: one folder per class (any names; labels follow their sorted order unless `classes` is given):
#   data/custom/train/<class>/*.jpg     data/custom/val/<class>/*.jpg
# Run:
#   python tools/train.py configs/cspnet/cspresnet50_finetune_custom.py --cfg-options model.head.num_classes=N
#   torchrun --nproc-per-node 4 tools/train.py configs/cspnet/cspresnet50_finetune_custom.py --launcher pytorch \
#       --auto-scale-lr --cfg-options model.head.num_classes=N     # lr x4 for 4 GPUs x 32 images (base 32)
# Evaluate the best epoch:
#   python tools/test.py configs/cspnet/cspresnet50_finetune_custom.py \
#       work_dirs/cspresnet50_finetune_custom/best.pth --cfg-options model.head.num_classes=N
_base_ = ['./cspresnet50_8xb32_in1k.py']

# Start from the published weights (True), or a file/URL in any layout (timm, mmpretrain, cspnet). Everything is
# loaded except the 1000-class head, which is replaced by a fresh one with model.head.num_classes outputs.
load_from = True

model = dict(
    # freeze the stem and stages 0-1 (weights fixed, BatchNorms in eval mode); -1 trains everything
    backbone=dict(frozen_stages=1),
    head=dict(
        num_classes=10,  # <- the number of your classes (must match the class folders)
        # label smoothing usually helps small datasets; dict(type='CrossEntropyLoss') for plain cross-entropy
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1),
    ))

# the head decides the class count (the base's 1000 here would only size Mixup's one-hot labels)
data_preprocessor = dict(num_classes=None)

# The base ImageNet pipelines stay: train RandomResizedCrop 224 + flip, test short edge 288 -> centre crop 256.
_data = dict(type='CustomDataset', data_root='data/custom')  # (names starting with _ are not config keys)
train_dataloader = dict(batch_size=32, num_workers=4, dataset=dict(_data, data_prefix='train'))
val_dataloader = dict(batch_size=32, num_workers=4, dataset=dict(_data, data_prefix='val'))
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

# EMA of the weights, evaluated next to the raw weights (ema_top1 in the log); best.pth follows the EMA's top-1.
custom_hooks = [dict(type='EMAHook', momentum=1e-3, update_buffers=True)]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),  # plus best.pth
)
env_cfg = dict(channels_last=True)  # NHWC: faster convolutions on recent GPUs, mostly with mixed precision
randomness = dict(seed=0, deterministic=False)
