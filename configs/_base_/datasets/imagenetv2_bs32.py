# ImageNetV2 (Recht et al. 2019), MatchedFrequency: 10,000 new images of the 1000 classes. Layout: its tarball
# imagenetv2-matched-frequency.tar.gz (links: https://github.com/modestyachts/ImageNetV2), unpacked unchanged:
#   data/imagenetv2-matched-frequency-format-val/<0..999>/<hash>.jpeg   (folder name = ImageNet class index)
# The Threshold0.7 and TopImages variants unpack the same way: point data_root at their folder.
# Only the test set differs from imagenet_bs32.py (train and val stay ImageNet-1k): use this file in place of it.
# cspnet test's summary names the set ("data: ..."). Schema of every key: the module docstring of cspnet/config.py.
_base_ = ['./imagenet_bs32.py']

test_dataloader = dict(dataset=dict(
    type='ImageNetV2', data_root='data/imagenetv2-matched-frequency-format-val', split=None))
