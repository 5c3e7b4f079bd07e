# SGD for a global batch of 256 (8 GPUs x 32): mmpretrain's configs/_base_/schedules/imagenet_bs256.py.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001))

# learning rate x0.1 at epochs 30, 60 and 90; no warmup
param_scheduler = dict(
    type='MultiStepLR', by_epoch=True, milestones=[30, 60, 90], gamma=0.1)

# train for 100 epochs, validate after every epoch
train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# With auto-scaling enabled, lr is scaled by (actual global batch) / base_batch_size.
auto_scale_lr = dict(base_batch_size=256)
