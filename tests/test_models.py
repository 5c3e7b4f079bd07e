"""The three networks: exact parameter counts, the classifier's outputs and options, and the architecture table's
state-dict shapes (backbone maps and options: test_features.py)."""

import pytest
import torch

import cspnet
from cspnet.errors import InvalidOptionError
from cspnet.models import ARCHS, CSPNet, ImageClassifier, num_params
from cspnet.models.cspnet import param_shapes, replace_arch

PARAMS = {"cspdarknet53": 27_642_184, "cspresnet50": 21_616_168, "cspresnext50": 20_569_896}


@pytest.mark.parametrize("arch", ARCHS)
def test_param_count_exact(arch):
    assert num_params(ImageClassifier(arch)) == PARAMS[arch]
    assert cspnet.get_weights_info(arch).params == PARAMS[arch]


@pytest.mark.parametrize("arch", [*ARCHS, "tiny"])
def test_state_dict_shapes_come_from_the_table(arch):
    """What a checkpoint must hold is read off the architecture table, without building a module (the converters
    use it); it is exactly what a built module holds, key order included."""
    a = replace_arch(ARCHS["cspresnext50"], name="tiny", depths=(2, 1, 1, 1), channels=(64, 128, 256, 512)) \
        if arch == "tiny" else ARCHS[arch]
    built = CSPNet(a, in_chans=4).state_dict()
    assert list(param_shapes(a, in_chans=4).items()) == [(k, tuple(v.shape)) for k, v in built.items()]


def test_invalid_model_names_and_classes():
    with pytest.raises(InvalidOptionError, match="unknown model 'cspnet99'"):
        cspnet.get_model("cspnet99")
    with pytest.raises(InvalidOptionError, match="num_classes"):
        ImageClassifier("cspresnet50", num_classes=-1)
    with pytest.raises(InvalidOptionError, match="stage="):
        ImageClassifier("cspresnet50").extract_feat(torch.randn(1, 3, 32, 32), stage="head")


def test_classifier_outputs_and_extract_feat():
    m = cspnet.get_model("cspdarknet53", out_indices=(1, 2, 3, 4))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert m(x).shape == (2, 1000)
        neck = m.extract_feat(x)
        assert [f.shape for f in neck] == [(2, 128), (2, 256), (2, 512), (2, 1024)]
        maps = m.extract_feat(x, stage="backbone")
        assert [f.shape[-1] for f in maps] == [16, 8, 4, 2]
        pre = m.extract_feat(x, stage="pre_logits")
        assert torch.allclose(pre, neck[-1]) and torch.allclose(m.head.fc(pre), m(x), atol=1e-5)
    m.reset_classifier(7)
    assert m(x).shape == (2, 7) and m.classes is None


def test_mmpretrain_style_overrides():
    m = cspnet.get_model("cspresnext50_3rdparty_8xb32_in1k", backbone=dict(type="CSPResNeXt", depth=50, out_indices=(0, 3)),
                         head=dict(num_classes=10))
    assert m.backbone.out_indices == (0, 3) and m.num_classes == 10
    with pytest.raises(InvalidOptionError, match="only num_classes"):
        cspnet.get_model("cspresnet50", head=dict(topk=(1,), dropout=0.3))


def test_zero_classes_gives_pooled_features():
    m = cspnet.get_model("cspresnet50", num_classes=0)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1024)
