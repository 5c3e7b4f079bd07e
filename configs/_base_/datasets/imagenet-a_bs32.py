# ImageNet-A(dversarial) (Hendrycks et al. 2021): 7,500 natural images ResNets misclassify, of 200 classes (not
# ImageNet-R's 200). Layout: https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar, unpacked unchanged:
#   data/imagenet-a/<wnid>/*.jpg   (200 WordNet-id folders, and its README.txt)
# As its authors evaluate (and timm's results-imagenet-a.csv), the predictions are restricted to those 200 classes.
# Only the test set differs from imagenet_bs32.py (train and val stay ImageNet-1k): use this file in place of it.
# cspnet test's summary names the set ("data: ..."). Schema of every key: the module docstring of cspnet/config.py.
_base_ = ['./imagenet_bs32.py']

test_dataloader = dict(dataset=dict(type='ImageNetA', data_root='data/imagenet-a', split=None))
