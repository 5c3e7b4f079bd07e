# ImageNet-1k, 32 images per GPU: mmpretrain's configs/_base_/datasets/imagenet_bs32.py.
# Schema of every key: the module docstring of cspnet/config.py. The CSPNet configs override both pipelines.
dataset_type = 'ImageNet'
data_preprocessor = dict(
    num_classes=1000,
    # RGB mean/std on the 0-255 scale (timm's 0-1 ImageNet statistics x 255)
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    # mmpretrain decodes BGR and flips to RGB here; cspnet decodes RGB, so only to_rgb=True is accepted
    to_rgb=True,
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=5,
    dataset=dict(
        type=dataset_type,
        data_root='data/imagenet',
        split='train',
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)

val_dataloader = dict(
    batch_size=32,
    num_workers=5,
    dataset=dict(
        type=dataset_type,
        data_root='data/imagenet',
        split='val',
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

# The standard ImageNet "test" is the val split (the test split has no public labels).
test_dataloader = val_dataloader
test_evaluator = val_evaluator
