"""The three networks: exact parameter counts, stage outputs, backbone options and their validation."""

import pytest
import torch

import cspnet
from cspnet.errors import InvalidOptionError
from cspnet.models import ARCHS, CSPNet, ImageClassifier, num_params

PARAMS = {"cspdarknet53": 27_642_184, "cspresnet50": 21_616_168, "cspresnext50": 20_569_896}
# (channels, stride) of every stage output: mmpretrain.md 1.3 and timm.md 1.3.
STAGES = {
    "cspdarknet53": [(64, 2), (128, 4), (256, 8), (512, 16), (1024, 32)],
    "cspresnet50": [(128, 4), (256, 8), (512, 16), (1024, 32)],
    "cspresnext50": [(256, 4), (512, 8), (1024, 16), (2048, 32)],
}


@pytest.mark.parametrize("arch", ARCHS)
def test_param_count_exact(arch):
    assert num_params(ImageClassifier(arch)) == PARAMS[arch]
    assert cspnet.get_weights_info(arch).params == PARAMS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_feature_info_and_maps(arch):
    model = CSPNet(arch, out_indices=tuple(range(len(STAGES[arch])))).eval()
    assert [(f.channels, f.stride) for f in model.feature_info] == STAGES[arch]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 96))
    assert [(m.shape[1], 64 // m.shape[2], 96 // m.shape[3]) for m in maps] == [(c, s, s) for c, s in STAGES[arch]]


def test_out_indices_negative_order_and_single_int():
    m = CSPNet("cspresnet50", out_indices=(-1, 0)).eval()
    assert m.out_indices == (0, 3) and m.out_channels == (128, 1024) and m.out_strides == (4, 32)
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in out] == [128, 1024]
    assert CSPNet("cspdarknet53", out_indices=2).out_indices == (2,)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(out_indices=(4,)), "out of range"),  # mmpretrain accepts num_stages and returns nothing
        (dict(out_indices=(-5,)), "out of range"),
        (dict(out_indices=()), "empty"),
        (dict(out_indices=(1, -3)), "twice"),
        (dict(frozen_stages=4), "frozen_stages"),
        (dict(frozen_stages=-2), "frozen_stages"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
    ],
)
def test_invalid_options_rejected(kwargs, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        CSPNet("cspresnet50", **kwargs)


def test_invalid_model_names_and_classes():
    with pytest.raises(InvalidOptionError, match="unknown model 'cspnet99'"):
        cspnet.get_model("cspnet99")
    with pytest.raises(InvalidOptionError, match="num_classes"):
        ImageClassifier("cspresnet50", num_classes=-1)
    with pytest.raises(InvalidOptionError, match="stage="):
        ImageClassifier("cspresnet50").extract_feat(torch.randn(1, 3, 32, 32), stage="head")


def test_frozen_stages_and_norm_eval():
    m = CSPNet("cspresnet50", frozen_stages=1, norm_eval=False)
    assert m.train() is m  # chaining works (mmpretrain's returns None)
    frozen = [m.stem, m.stages[0], m.stages[1]]
    assert all(not p.requires_grad for mod in frozen for p in mod.parameters())
    assert all(p.requires_grad for p in m.stages[2].parameters())
    assert not m.stages[1].blocks[0].conv1.bn.training and m.stages[2].blocks[0].conv1.bn.training
    m2 = CSPNet("cspresnet50", norm_eval=True).train()
    before = m2.stages[3].conv_exp.bn.running_mean.clone()
    m2(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, m2.stages[3].conv_exp.bn.running_mean)


def test_drop_path_rate_active_in_training_only():
    m = CSPNet("cspresnet50", drop_path_rate=0.5, norm_eval=True, zero_init_last=False)  # zero-init blocks are identity
    rates = [b.drop_path.rate for s in m.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(0)
    a = m.train()(x)[0]
    b = m(x)[0]
    assert not torch.allclose(a, b)  # stochastic in training
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


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
