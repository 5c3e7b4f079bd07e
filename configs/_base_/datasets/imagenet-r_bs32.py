# ImageNet-R(endition) (Hendrycks et al. 2021): 30,000 renditions (art, cartoons, sketches, ...) of 200 classes.
# Layout: https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar, unpacked unchanged:
#   data/imagenet-r/<wnid>/*.jpg   (200 WordNet-id folders)
# As its authors evaluate (and timm's results-imagenet-r.csv), the predictions are restricted to those 200 classes:
# top-k over the 200 logits of the folders' classes.
# Only the test set differs from imagenet_bs32.py (train and val stay ImageNet-1k): use this file in place of it.
# cspnet test's summary names the set ("data: ..."). Schema of every key: the module docstring of cspnet/config.py.
_base_ = ['./imagenet_bs32.py']

test_dataloader = dict(dataset=dict(type='ImageNetR', data_root='data/imagenet-r', split=None))
