"""The fast inference paths (``cspnet.fuse_bn``, ``cspnet.optimize_for_inference``, the GPU-decode input path):
each one's numbers against the plain float32 model, on CPU. Speed is measured by ``benchmarks/``, never here."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import cspnet
from cspnet.data.transforms import EvalPreset, EvalTransform
from cspnet.data.gpu_decode import EncodedImage, GpuJpegDecoder, JpegReader, apply_exif_orientation
from cspnet.data.loader import build_eval_loader
from cspnet.engine.evaluate import evaluate
from cspnet.errors import ImageError, InvalidOptionError
from cspnet.models import ImageClassifier
from cspnet.models.cspnet import BottleneckBlock, ConvNormAct, DarkBlock
from cspnet.models.fuse import FusedConvAct
from cspnet.optimize import InferenceModel
from cspnet.weights.convert import convert_state_dict
from golden import ARCH_NAMES, DEMO, golden_inputs, recipe_state_dict

FUSE_RTOL = 1e-4  # the brief: folded logits within 1e-4 of the largest plain logit
BF16_RTOL = 3e-2  # bfloat16 keeps 8 mantissa bits; measured 0.4-0.6% here, on the three nets


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module", params=ARCH_NAMES)
def golden_model(request):
    arch = request.param
    m = ImageClassifier(arch).eval()
    m.load_state_dict(convert_state_dict(recipe_state_dict(arch), arch, "cspnet"))
    x = golden_inputs(arch)
    with torch.inference_mode():
        plain = m(x)
    return arch, m, x, plain


def test_fast_default_matches_plain_float32(golden_model):
    arch, m, x, plain = golden_model
    fast = cspnet.optimize_for_inference(m)  # folded + channels_last
    with torch.inference_mode():
        out = fast(x)
    assert out.dtype == torch.float32 and out.shape == plain.shape
    assert rel(out, plain) < FUSE_RTOL, arch
    assert torch.equal(out.argmax(1), plain.argmax(1))


@pytest.mark.parametrize("arch", ARCH_NAMES)
@pytest.mark.parametrize("kwargs", [{"channels_last": False}, {"fuse": False}, {"fuse": False, "channels_last": False}],
                         ids=["folded-nchw", "unfused-nhwc", "copy"])
def test_each_fast_path_matches_plain_float32(arch, kwargs, tiny_classifier):
    m = tiny_classifier(arch)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        plain, out = m(x), cspnet.optimize_for_inference(m, **kwargs)(x)
    assert rel(out, plain) < FUSE_RTOL and torch.equal(out.argmax(1), plain.argmax(1))


def test_bf16_within_tolerance_same_top1(golden_model):
    arch, m, x, plain = golden_model
    fast = cspnet.optimize_for_inference(m, dtype="bf16")
    assert fast.model.head.fc.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        out = fast(x)
    assert out.dtype == torch.float32
    assert 1e-4 < rel(out, plain) < BF16_RTOL, arch  # really bf16 (not silently float32), and close
    assert torch.equal(out.argmax(1), plain.argmax(1))


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fuse_bn_is_a_pure_eval_only_copy(arch, tiny_classifier):
    m = tiny_classifier(arch)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        plain = m(x)
    fused = cspnet.fuse_bn(m)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in fused.modules())
    assert not any(isinstance(mod, (ConvNormAct, DarkBlock, BottleneckBlock)) for mod in fused.modules())
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())  # the source is untouched
    assert all(not p.requires_grad for p in fused.parameters())
    with torch.inference_mode():
        assert rel(fused(x), plain) < FUSE_RTOL
        assert rel(m(x), plain) == 0.0
        for a, b in zip(fused.extract_feat(x, "backbone"), m.extract_feat(x, "backbone")):
            assert rel(a, b) < FUSE_RTOL
    with pytest.raises(InvalidOptionError, match="for inference only"):
        fused.train()
    fused.eval()  # eval stays allowed
    with pytest.raises(InvalidOptionError, match="no cspnet conv"):
        cspnet.fuse_bn(torch.nn.Linear(2, 2))


def test_fused_conv_paths_agree_with_and_without_autograd(tiny_classifier):
    """On CPU without autograd a folded conv runs as one oneDNN op; with autograd, as conv + act. Same numbers, and
    gradients with respect to the input (Grad-CAM) still flow through the folded model."""
    m = cspnet.fuse_bn(tiny_classifier("cspdarknet53"))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        fast = m(x)
    xg = x.clone().requires_grad_(True)
    out = m(xg)
    out[:, 0].sum().backward()
    assert rel(out.detach(), fast) < 1e-5
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    conv = next(mod for mod in m.modules() if isinstance(mod, FusedConvAct))
    assert isinstance(conv.act, torch.nn.LeakyReLU) and conv.act.negative_slope == 0.01


def test_fixed_batch_pads_and_splits(tiny_classifier):
    """With compile or CUDA graphs the first batch size is kept: smaller batches are padded, larger ones split."""
    m = tiny_classifier()
    x = torch.randn(12, 3, 32, 32)
    with torch.inference_mode():
        plain = m(x)
        fixed = InferenceModel(cspnet.fuse_bn(m), channels_last=True, dtype=None, fixed_batch=True).eval()
        outs = [fixed(x[:5]), fixed(x[5:8]), fixed(x)]
    assert fixed._batch == 5
    assert [o.shape[0] for o in outs] == [5, 3, 12]
    assert rel(torch.cat(outs[:2]), plain[:8]) < FUSE_RTOL and rel(outs[2], plain) < FUSE_RTOL


def test_bad_options(tiny_classifier):
    m = tiny_classifier()
    with pytest.raises(InvalidOptionError, match="CUDA device"):
        cspnet.optimize_for_inference(m, cuda_graph=True)
    with pytest.raises(InvalidOptionError, match="dtype='int8'"):
        cspnet.optimize_for_inference(m, dtype="int8")


def test_inference_model_fast_default_same_top1():
    m = cspnet.get_model("cspresnet50")
    cspnet.load_weights(m, recipe_state_dict("cspresnet50"))
    images = sorted(str(p) for p in DEMO.iterdir())
    fast = cspnet.inference_model(m, images, batch_size=4)
    plain = cspnet.inference_model(m, images, batch_size=4, optimize=False)
    assert [r["pred_label"] for r in fast] == [r["pred_label"] for r in plain]
    for f, p in zip(fast, plain):
        assert np.abs(f["pred_scores"] - p["pred_scores"]).max() < 1e-5
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules()) and not m.training


def test_inference_model_folds_once_until_the_weights_change(monkeypatch, tiny_classifier):
    import cspnet.inference as inference

    folds = []
    real = inference.optimize_for_inference
    monkeypatch.setattr(inference, "optimize_for_inference", lambda m, **k: folds.append(1) or real(m, **k))
    m, image = tiny_classifier(), DEMO / "dog.jpg"
    first = cspnet.inference_model(m, image)["pred_scores"]
    assert np.array_equal(cspnet.inference_model(m, image)["pred_scores"], first) and len(folds) == 1
    m.load_state_dict(tiny_classifier(seed=1).state_dict())  # in place: the cached copy is stale
    changed = cspnet.inference_model(m, image)["pred_scores"]
    assert len(folds) == 2 and not np.allclose(changed, first)
    assert np.abs(changed - cspnet.inference_model(m, image, optimize=False)["pred_scores"]).max() < 1e-5
    with torch.no_grad():
        m.head.fc.bias.add_(1.0)  # an in-place edit of one tensor
    cspnet.inference_model(m, image)
    m.head.fc.weight.data = m.head.fc.weight.data * 2  # a swapped storage, no version bump
    cspnet.inference_model(m, image)
    m.to(torch.float64).float()  # cast there and back: new storages
    cspnet.inference_model(m, image)
    assert len(folds) == 5
    with torch.inference_mode():
        made_there = tiny_classifier()  # inference tensors have no version counter: folded on every call instead
    for _ in range(2):
        assert np.abs(cspnet.inference_model(made_there, image)["pred_scores"] - first).max() < 1e-5
    assert len(folds) == 7


def test_inference_model_decodes_in_workers_with_the_same_results(tmp_path, tiny_classifier):
    """More images than one batch: loader workers decode them (in order); a bad file is still named."""
    m = tiny_classifier()
    images = sorted(str(p) for p in DEMO.iterdir()) * 2
    here = cspnet.inference_model(m, images, batch_size=3, num_workers=0)
    workers = cspnet.inference_model(m, images, batch_size=3)  # 3 batches: 2 workers on this machine
    on_device = cspnet.inference_model(m, images, batch_size=3, resize="device")  # the default on CUDA
    for other in (workers, on_device):
        assert [r["pred_label"] for r in here] == [r["pred_label"] for r in other]
        assert all(np.array_equal(a["pred_scores"], b["pred_scores"]) for a, b in zip(here, other))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ImageError, match="bad.jpg"):
        cspnet.inference_model(m, images + [str(bad)], batch_size=3, num_workers=2)
    with pytest.raises(InvalidOptionError, match="num_workers"):
        cspnet.inference_model(m, images, num_workers=-1)
    with pytest.raises(InvalidOptionError, match="resize='gpu'"):
        cspnet.inference_model(m, images, resize="gpu")


# ---------------------------------------------------------------------------------------------------------------
# The GPU input path, in the parts that need no GPU
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    arr = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    img = Image.fromarray(arr)
    img.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(img))
    got = apply_exif_orientation(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape and (got == want).all(), orientation


def test_jpeg_reader_routes_files(tmp_path):
    preset = EvalPreset(72, 64)
    reader = JpegReader(preset)
    jpeg = reader(str(DEMO / "bird.JPEG"))
    assert jpeg.decoded is None and jpeg.orientation == 1
    assert jpeg.data == (DEMO / "bird.JPEG").read_bytes()  # the file's bytes, for nvJPEG
    png = reader(str(DEMO / "cat-dog.png"))  # not a JPEG: the exact Pillow pipeline, in the worker
    assert png.data is None and torch.equal(png.decoded, EvalTransform(preset).to_uint8(DEMO / "cat-dog.png"))
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 100, 200, 0)).save(cmyk)
    assert reader(str(cmyk)).decoded is not None
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.JPEG"):
        reader(str(bad))


def test_jpeg_reader_leaves_oversize_jpegs_to_pillow_which_refuses_them(monkeypatch):
    """A JPEG over Pillow's pixel limit (by less than 2x, where Pillow's open only warns) goes to the Pillow path,
    which refuses it as a decompression bomb, as the loader path does; nvJPEG never sees it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 403 * 500 - 1)  # bird.JPEG is 403 x 500
    with pytest.raises(ImageError, match="too many pixels"):
        JpegReader(EvalPreset(72, 64))(str(DEMO / "bird.JPEG"))


def test_gpu_decoder_without_torchvision_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    with pytest.raises(InvalidOptionError, match="needs torchvision.*--decode cpu"):
        GpuJpegDecoder(EvalPreset(72, 64), "cpu")


def test_decoder_on_cpu_matches_pillow_pipeline():
    pytest.importorskip("torchvision")
    preset = EvalPreset(72, 64)
    reader, decoder, t = JpegReader(preset), GpuJpegDecoder(preset, "cpu"), EvalTransform(preset)
    paths = sorted(DEMO.iterdir())
    out = decoder([reader(str(p)) for p in paths])
    for p, got in zip(paths, out):
        # torchvision's CPU decoder is libjpeg-turbo, as Pillow's, and the resize is Pillow's own: equal. (On a GPU,
        # nvJPEG's IDCT differs: benchmarks/decode_agreement.py measures that.)
        assert torch.equal(got, t.to_uint8(p)), p.name


def test_evaluate_with_a_decode_hook(tmp_path, tiny_classifier):
    """The loader hands encoded images over as a list; ``decode`` turns them into the uint8 batch. Same metrics."""
    preset = EvalPreset(40, 32)
    t, reader = EvalTransform(preset), JpegReader(preset)
    paths = [str(p) for p in sorted(DEMO.iterdir())]

    class DS(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform, self.samples = transform, [(p, i % 10) for i, p in enumerate(paths)]

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            return self.transform(self.samples[i][0]), self.samples[i][1]

    def decode(items: list[EncodedImage]) -> torch.Tensor:  # what GpuJpegDecoder does, with Pillow
        return torch.stack([it.decoded if it.decoded is not None else
                            t.to_uint8(Image.open(io.BytesIO(it.data)))
                            for it in items])

    m = tiny_classifier()
    runs = [evaluate(m, build_eval_loader(DS(tr), 3, 0), t, decode=dec, progress=False, keep_predictions=True)
            for tr, dec in ((t.to_uint8, None), (reader, decode))]
    assert runs[0].metrics == runs[1].metrics and runs[0].num_samples == 4
    assert [p["top5"] for p in runs[0].predictions] == [p["top5"] for p in runs[1].predictions]


def test_cli_decode_gpu_needs_cuda(capsys):
    from cspnet.cli import main

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only message")
    config = str(Path(__file__).parents[1] / "configs/cspnet/cspresnet50_8xb32_in1k.py")
    rc = main(["test", config, "x.pth", "--decode", "gpu", "--device", "cpu",
               "--cfg-options", "test_dataloader.dataset.data_root=/nonexistent"])
    assert rc == 2 and "--decode gpu needs a CUDA device" in capsys.readouterr().err
