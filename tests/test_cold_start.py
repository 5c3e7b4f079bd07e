"""Cold start: a checkpoint's model is built without the random init its weights overwrite, takes the file's tensors
exactly, and folds without copying what folding replaces. (Whole-process times: ``benchmarks/bench_cold_start.py``;
``cspnet --help`` without torch: ``tests/test_architecture.py``.)"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

import cspnet
from cspnet.errors import CheckpointError
from cspnet.models import ARCHS
from cspnet.models.cspnet import ConvNormAct
from cspnet.weights import load, read
from cspnet.weights.convert import HEAD_KEYS, backbone_spec, convert_state_dict
from cspnet.weights.files import read_weights, save_state_dict
from cspnet.weights.loading import check_values
from cspnet.weights.records import get_weights_info
from golden import ARCH_NAMES, DEMO, recipe_state_dict

INITS = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "trunc_normal_", "xavier_uniform_",
         "xavier_normal_", "zeros_", "ones_", "constant_")


@pytest.fixture
def inits(monkeypatch):
    """Every torch.nn.init call on a real (not meta) tensor, as ``[(function name, shape)]``: what modules' default
    ``reset_parameters`` and cspnet's own init use."""
    calls: list[tuple[str, tuple[int, ...]]] = []
    for name in INITS:
        original = getattr(torch.nn.init, name)

        def counted(tensor, *args, _name=name, _original=original, **kwargs):
            if not tensor.is_meta:
                calls.append((_name, tuple(tensor.shape)))
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, counted)
    return calls


def _cspnet_file(tmp_path, arch: str = "cspresnet50", suffix: str = ".pth", **changes):
    """The recipe weights in the cspnet layout with the published spec (as training writes them), changed."""
    sd = convert_state_dict(recipe_state_dict(arch), arch, "cspnet")
    spec = get_weights_info(arch).spec().replace(**changes) if changes else get_weights_info(arch).spec()
    return save_state_dict(sd, tmp_path / f"{arch}{suffix}", "cspnet", spec), sd


def test_the_init_counter_sees_a_random_init(inits):
    """The check below is not vacuous: a model built without weights is initialised, and the counter sees it."""
    cspnet.get_model("cspresnet50")
    assert {name for name, _ in inits} >= {"kaiming_normal_", "normal_", "zeros_", "ones_"}


def test_a_checkpoint_load_does_no_random_init(inits, recipe_checkpoint, tmp_path):
    path, _ = _cspnet_file(tmp_path)
    cspnet.get_model(None, path)  # the file names its model
    cspnet.get_model("cspresnet50", recipe_checkpoint("cspresnet50", "timm"))  # timm's layout, named
    load(get_weights_info("cspresnet50").spec(), path)  # cspnet.load_weights into a spec
    assert inits == []


def test_a_new_head_alone_is_initialised(inits, recipe_checkpoint, caplog):
    model = cspnet.get_model("cspresnet50", recipe_checkpoint("cspresnet50", "timm"), num_classes=10)
    assert {shape for _, shape in inits} == {(10, 1024), (10,)}  # the head's tensors, and no others
    assert {("normal_", (10, 1024)), ("zeros_", (10,))} <= set(inits)  # as a fresh build makes it
    w = model.head.fc.weight
    assert not w.is_meta and w.requires_grad and 0.005 < float(w.detach().std()) < 0.02 and not model.head.fc.bias.any()
    assert "new, untrained 10-class head" in caplog.text


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_get_model_holds_exactly_the_files_weights(tmp_path, suffix):
    path, _ = _cspnet_file(tmp_path, suffix=suffix)
    model = cspnet.get_model(None, path)
    file = read_weights(path).state_dict
    got = model.state_dict()
    assert sorted(got) == sorted(file)  # (safetensors stores its keys sorted)
    for k, v in file.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        assert got[k].is_contiguous() and not got[k].is_meta and got[k].data_ptr() % 64 == 0, k  # as a copy's
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())  # as a fresh build's: ready to fine-tune
    storages = [t.untyped_storage().data_ptr() for t in got.values() if t.numel()]
    assert len(set(storages)) == len(storages)  # no two tensors share memory


def test_the_model_is_the_models_own_not_the_callers(recipe_checkpoint):
    """A state dict given in memory stays the caller's: the model loads copies, and a step on it changes nothing
    there; a half-precision, channels-last file still gives the float32, contiguous model a copy gave."""
    sd = convert_state_dict(recipe_state_dict("cspresnet50"), "cspresnet50", "cspnet")
    before = {k: v.clone() for k, v in sd.items()}
    model = cspnet.get_model("cspresnet50", sd)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    assert all(torch.equal(sd[k], before[k]) for k in sd)

    odd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    odd = {k: v.to(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in odd.items()}
    model = cspnet.get_model("cspresnet50", odd)
    for k, v in model.state_dict().items():
        assert v.is_contiguous() and v.dtype == (torch.float32 if odd[k].is_floating_point() else torch.long), k
        assert torch.equal(v, odd[k].to(v.dtype)), k


def test_weights_stored_as_views_of_one_buffer_become_separate_tensors(tmp_path):
    """A file may store every tensor as a view of one buffer: the model's tensors must not alias each other."""
    sd = convert_state_dict(recipe_state_dict("cspresnet50"), "cspresnet50", "cspnet")
    floats = {k: v for k, v in sd.items() if v.is_floating_point()}
    flat = torch.cat([v.reshape(-1) for v in floats.values()])
    views, start = {}, 0
    for k, v in floats.items():
        views[k] = flat[start:start + v.numel()].view(v.shape)
        start += v.numel()
    path = tmp_path / "flat.pth"
    torch.save({**sd, **views}, path)
    model = cspnet.get_model("cspresnet50", path)
    got = model.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    ptrs = [got[k].untyped_storage().data_ptr() for k in floats]
    assert len(set(ptrs)) == len(ptrs)


def test_frozen_stages_and_features_only_after_an_assigned_load(recipe_checkpoint):
    path = recipe_checkpoint("cspresnet50", "timm")
    frozen = cspnet.get_model("cspresnet50", path, frozen_stages=1)
    fresh = cspnet.get_model("cspresnet50", frozen_stages=1)
    assert [p.requires_grad for p in frozen.parameters()] == [p.requires_grad for p in fresh.parameters()]
    assert not all(p.requires_grad for p in frozen.parameters())
    features = cspnet.get_model("cspresnet50", path, features_only=True)
    sd = read(path, "cspresnet50").state_dict
    assert all(torch.equal(v, sd[f"backbone.{k}"]) for k, v in features.state_dict().items())


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_a_meta_build_is_the_table_and_a_real_build(arch):
    """The keys of every layout come from the table (no module built); a model built on the meta device, which a
    checkpoint load fills, has exactly the keys, shapes, dtypes and trainable flags of a real build."""
    spec = get_weights_info(arch).spec()
    meta, real = spec.build(init=False), spec.build()
    head = {HEAD_KEYS[0]: (spec.num_classes, meta.num_features), HEAD_KEYS[1]: (spec.num_classes,)}
    table = {**backbone_spec(ARCHS[arch]), **head}
    m, r = meta.state_dict(keep_vars=True), real.state_dict(keep_vars=True)
    assert [(k, tuple(v.shape)) for k, v in m.items()] == list(table.items())
    assert [(k, v.shape, v.dtype, v.requires_grad) for k, v in m.items()] == \
        [(k, v.shape, v.dtype, v.requires_grad) for k, v in r.items()]
    assert all(v.is_meta for v in m.values()) and not any(v.is_meta for v in r.values())
    assert meta.classes == real.classes and meta.transform.preset == real.transform.preset and meta.name == real.name


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_folding_is_torchs_arithmetic_and_leaves_the_source_alone(arch, tiny_classifier):
    """fuse_bn gives bit for bit the convs torch's fuse_conv_bn_eval gives, without copying what it replaces and
    without changing the source (its weights, its training mode); ``memory_format`` writes the weights NHWC."""
    model = tiny_classifier(arch).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = [fuse_conv_bn_eval(copy.deepcopy(m.conv).eval(), copy.deepcopy(m.bn).eval())
           for m in model.modules() if isinstance(m, ConvNormAct)]
    plain = cspnet.fuse_bn(model)
    nhwc = cspnet.fuse_bn(model, memory_format=torch.channels_last)
    for fused, fmt in ((plain, torch.contiguous_format), (nhwc, torch.channels_last)):
        convs = [m for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == len(ref)
        for a, b in zip(convs, ref):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
            assert a.weight.is_contiguous(memory_format=fmt) and not a.weight.requires_grad
        source = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
        assert not source & {t.untyped_storage().data_ptr() for t in fused.state_dict().values()}
        assert not fused.training
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():  # the same function; the NHWC convs may round differently
        assert torch.allclose(plain(x), nhwc(x), rtol=1e-5, atol=1e-5)


@pytest.mark.reliability("checkpoint-nan-inf")
def test_the_finite_check_is_exact_where_a_sum_overflows():
    """The NaN/Inf check sums each tensor (finite sum: every value finite); a sum that overflows proves nothing,
    so large finite weights pass and a single NaN or Inf among them is still found."""
    big = {"w": torch.full((10,), 6e4, dtype=torch.float16), "v": torch.full((4,), 3e38)}
    check_values(big, "test")
    for bad in (float("nan"), float("inf"), -float("inf")):
        for k in big:
            t = big[k].clone()
            t[1] = bad
            with pytest.raises(CheckpointError, match=f"{k} \\(1 of"):
                check_values({**big, k: t}, "test")


@pytest.mark.slow
def test_predict_from_a_checkpoint_imports_no_compiler(recipe_checkpoint):
    """``cspnet predict IMG --weights F`` in a fresh process: it answers, and never imports torch._dynamo (random
    init on the meta device did: seconds of a cold start) nor timm-sized extras."""
    weights = recipe_checkpoint("cspresnet50", "cspnet")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cspnet", "predict", str(DEMO / "dog.jpg"),
                           "--weights", str(weights), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "torch" in imported and not imported & {"torch._dynamo", "torch._inductor", "torchvision", "timm"}
    assert json.loads(proc.stdout)[0]["topk"][0]["class"]
