"""Pictures: Grad-CAM against autograd references, the colormap, ``cspnet cam`` and ``cspnet predict --save-vis``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cspnet
from cspnet.cli import main
from cspnet.errors import InvalidOptionError
from cspnet.visualize import colormap, draw_topk, grad_cam, overlay_cam, vis_paths

import golden

DOG, BIRD = golden.DEMO / "dog.jpg", golden.DEMO / "bird.JPEG"


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    lo = cam.amin(dim=(1, 2), keepdim=True)
    return (cam - lo) / (cam.amax(dim=(1, 2), keepdim=True) - lo)


class TinyNet(nn.Module):
    """conv -> global average pool -> linear: Grad-CAM reduces to the classic CAM, ReLU(sum_k W[c, k] A_k)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_grad_cam_of_a_pooled_linear_net_is_the_closed_form_cam():
    torch.manual_seed(0)
    net, x = TinyNet(), torch.randn(3, 3, 12, 12)
    cam, classes, logits = grad_cam(net, x, "features", target_class=[0, 2, 3])
    assert classes.tolist() == [0, 2, 3] and logits.shape == (3, 4)
    with torch.no_grad():
        a = net.features(x)
        # dy_c/dA_k = W[c, k] / (h w) everywhere, so the channel weights are W[c] / (h w): a positive scale
        ref = F.relu(torch.einsum("nk,nkhw->nhw", net.fc.weight[classes], a))
    assert cam.shape == (3, 12, 12)
    assert torch.allclose(cam, _normalise(ref), atol=1e-5)
    assert cam.amin() == 0 and torch.allclose(cam.amax(dim=(1, 2)), torch.ones(3))


@pytest.fixture(scope="module")
def weights_file(recipe_checkpoint):
    return recipe_checkpoint("cspresnet50")


@pytest.fixture(scope="module")
def net(weights_file):
    # the golden recipe weights: with a random init every input gets the same class and other classes' maps are 0
    return cspnet.get_model("cspresnet50", pretrained=weights_file)


@pytest.mark.parametrize("stage,target", [(3, None), (2, 7)])
def test_grad_cam_equals_autograd_on_cspnet(net, stage, target):
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    cam, classes, logits = grad_cam(net, x, f"backbone.stages.{stage}" if target is not None else None, target)
    # the reference: split the network at the stage by hand and differentiate with autograd
    h = net.backbone.stem(x)
    for i, s in enumerate(net.backbone.stages):
        h = s(h)
        if i == stage:
            acts = h
    ref_logits = net.head(h)
    want = ref_logits.argmax(1) if target is None else torch.full((2,), target)
    assert torch.equal(classes, want)
    assert torch.allclose(logits, ref_logits.detach(), atol=1e-5)
    (grads,) = torch.autograd.grad(ref_logits[torch.arange(2), want].sum(), acts)
    ref = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    ref = F.interpolate(ref, size=(96, 96), mode="bilinear", align_corners=False)[:, 0].detach()
    assert 0.0 < (ref > 0).float().mean() and (ref.amax((1, 2)) > 0).all()  # a map worth comparing
    assert torch.allclose(cam, _normalise(ref), atol=1e-4)
    assert not net.training


def test_grad_cam_errors(net):
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(InvalidOptionError, match="backbone.stages.3"):
        grad_cam(net, x, "backbone.stages.9")
    with pytest.raises(InvalidOptionError, match="1000 classes"):
        grad_cam(net, x, target_class=1000)
    with pytest.raises(InvalidOptionError, match="one \\(N, C, h, w\\) map"):
        grad_cam(net, x, "head.fc")


def test_colormap_and_overlay():
    lut = colormap(np.array([0.0, 0.5, 1.0]))
    assert lut.dtype == np.uint8 and lut.tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]  # blue, pale, red
    img = np.full((8, 10, 3), 200, np.uint8)
    cam = torch.zeros(8, 10)
    cam[:, 5:] = 1.0
    out = np.asarray(overlay_cam(img, cam, alpha=0.5))
    assert out.shape == (8, 10, 3)
    assert out[0, 0].tolist() == [100, 100, 164] and out[0, 9].tolist() == [164, 100, 100]
    assert np.array_equal(np.asarray(overlay_cam(torch.from_numpy(img).permute(2, 0, 1), cam, 0.0)), img)
    with pytest.raises(InvalidOptionError, match="size"):
        overlay_cam(img, torch.zeros(4, 4))


def test_draw_topk_and_vis_paths():
    drawn = draw_topk(DOG, [(207, 0.9, "golden retriever"), (208, 0.05, None)])
    src = cspnet.load_image(DOG)
    assert drawn.size == src.size
    diff = np.abs(np.asarray(drawn, np.int16) - np.asarray(src, np.int16)).sum(2)
    assert diff[:20, :60].any() and not diff[-20:, -20:].any()  # text in the top-left corner only
    assert vis_paths(["a/dog.jpg", "b/dog.jpg", "cat.png"], "out") == [
        Path("out/dog.png"), Path("out/dog-1.png"), Path("out/cat.png")]
    assert vis_paths(["a/dog.jpg"], "x.jpg") == [Path("x.jpg")]
    with pytest.raises(InvalidOptionError, match="folder"):
        vis_paths(["a.jpg", "b.jpg"], "x.png")


def test_cli_cam_writes_a_png_of_the_crop(weights_file, tmp_path, capsys):
    out = tmp_path / "cam.png"
    rc = main(["cam", str(DOG), "--model", "cspresnet50", "--weights", str(weights_file), "--target-class", "5",
               "--output", str(out), "--device", "cpu"])
    assert rc == 0
    assert "Grad-CAM of [5]" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (256, 256)  # the eval crop
        pixels = np.asarray(img)
    crop = cspnet.get_transform("cspresnet50").to_uint8(DOG).permute(1, 2, 0).numpy()
    assert not np.array_equal(pixels, crop)
    assert main(["cam", str(DOG), "--model", "cspresnet50", "--weights", str(weights_file), "--target-layer",
                 "backbone.nope", "--output", str(tmp_path / "bad.png")]) == 2
    assert "backbone.stages.0" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()


def test_cli_predict_save_vis(weights_file, tmp_path, capsys):
    folder = tmp_path / "vis"
    rc = main(["predict", str(DOG), str(BIRD), "--model", "cspresnet50", "--weights", str(weights_file),
               "--topk", "3", "--json", "--save-vis", str(folder), "--device", "cpu"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["vis"] for r in rows] == [str(folder / "dog.png"), str(folder / "bird.png")]
    for src, row in zip((DOG, BIRD), rows):
        with Image.open(row["vis"]) as img:
            assert img.format == "PNG" and img.size == cspnet.load_image(src).size
    single = tmp_path / "one.jpg"
    assert main(["predict", str(DOG), "--model", "cspresnet50", "--weights", str(weights_file),
                 "--save-vis", str(single), "--device", "cpu"]) == 0
    with Image.open(single) as img:
        assert img.format == "JPEG"
    assert main(["predict", str(DOG), str(BIRD), "--model", "cspresnet50", "--weights", str(weights_file),
                 "--save-vis", str(tmp_path / "two.png"), "--device", "cpu"]) == 2
    assert "give a folder" in capsys.readouterr().err
