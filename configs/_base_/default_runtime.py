# Runtime defaults: mmpretrain's configs/_base_/default_runtime.py (keys kept so its configs read the same).
default_scope = 'mmpretrain'

default_hooks = dict(
    # record the time of every iteration
    timer=dict(type='IterTimerHook'),
    # print a log line every 100 iterations
    logger=dict(type='LoggerHook', interval=100),
    # step the learning-rate schedule
    param_scheduler=dict(type='ParamSchedulerHook'),
    # save a checkpoint after every epoch
    checkpoint=dict(type='CheckpointHook', interval=1),
    # reseed the distributed sampler every epoch
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # prediction visualisation, off
    visualization=dict(type='VisualizationHook', enable=False),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'

# checkpoint to initialise from (tools/test.py sets it from its CHECKPOINT argument)
load_from = None

# resume training from load_from (or the latest checkpoint in work_dir)
resume = False

# seed=None: a random seed; deterministic=False: cuDNN may pick non-deterministic kernels
randomness = dict(seed=None, deterministic=False)
