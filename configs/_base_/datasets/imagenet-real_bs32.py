# ImageNet ReaL ("Are we done with ImageNet?", Beyer et al. 2020): the 50,000 ILSVRC2012 val images, scored against
# ReaL's re-assessed label sets. Layout: the ImageNet val images in any layout type='ImageNet' reads (imagenet_bs32.py),
# plus ReaL's real.json (https://github.com/google-research/reassessed-imagenet), unchanged, beside them:
#   data/imagenet/val/ILSVRC2012_val_00000001.JPEG ...  (or val/<wnid>/..., or meta/val.txt)
#   data/imagenet/val/real.json                        (or data/imagenet/real.json, or ann_file='path/to/real.json')
# A prediction is correct when it is in the image's label set; the 3,163 images whose set is empty are left out of
# the metrics, as the paper does (timm's validate.py --real-labels).
# Only the test set differs from imagenet_bs32.py (train and val stay ImageNet-1k): use this file in place of it.
# cspnet test's summary names the set ("data: ..."). Schema of every key: the module docstring of cspnet/config.py.
_base_ = ['./imagenet_bs32.py']

test_dataloader = dict(dataset=dict(type='ImageNetReaL'))  # the val set's data_root and split, + real.json
