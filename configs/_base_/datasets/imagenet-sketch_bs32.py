# ImageNet-Sketch (Wang et al. 2019): 50,889 black-and-white sketches of the 1000 classes. Layout: its
# ImageNet-Sketch.zip (https://github.com/HaohanWang/ImageNet-Sketch; also on Kaggle and the Hugging Face Hub),
# unpacked unchanged:
#   data/sketch/<wnid>/*.JPEG   (1000 WordNet-id folders)
# Only the test set differs from imagenet_bs32.py (train and val stay ImageNet-1k): use this file in place of it.
# cspnet test's summary names the set ("data: ..."). Schema of every key: the module docstring of cspnet/config.py.
_base_ = ['./imagenet_bs32.py']

test_dataloader = dict(dataset=dict(type='ImageNetSketch', data_root='data/sketch', split=None))
