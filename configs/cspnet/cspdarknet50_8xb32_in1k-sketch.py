# CSPDarkNet-53 (cspdarknet50_8xb32_in1k.py) tested on ImageNet-Sketch: 1000 WordNet-id folders, as ImageNet's.
# Layout, download and scoring: configs/_base_/datasets/imagenet-sketch_bs32.py, whose test set this repeats over this
# model's test pipeline (a key set by two _base_ files is an error, and the model's config already sets the test set).
#   python tools/test.py configs/cspnet/cspdarknet50_8xb32_in1k-sketch.py CHECKPOINT
# The test pipeline is mmpretrain's (short edge 288, Pillow bicubic, centre crop 256). timm's published figures
# (results-sketch.csv: 31.007 / 50.392 top-1 / top-5 for cspdarknet53.ra_in1k) are at 256 px, crop_pct 0.887,
# bilinear: add
#   --crop-pct 0.887 --interpolation bilinear
# Another model on this set: its own config with the three keys below, e.g. CSPResNet-50 (for CSPResNeXt-50, whose
# config crops 224, also test_dataloader.dataset.pipeline.2.crop_size=256 for timm's 256 px):
#   python tools/test.py configs/cspnet/cspresnet50_8xb32_in1k.py CHECKPOINT --crop-pct 0.887 \
#       --interpolation bilinear --cfg-options test_dataloader.dataset.type=ImageNetSketch \
#       test_dataloader.dataset.data_root=data/sketch test_dataloader.dataset.split=None
_base_ = ['./cspdarknet50_8xb32_in1k.py']

test_dataloader = dict(dataset=dict(type='ImageNetSketch', data_root='data/sketch', split=None))
