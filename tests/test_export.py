"""``cspnet export`` / ``export_model``: files whose runtimes give PyTorch's logits, with their metadata."""

import json
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch

import cspnet
from cspnet.cli import main
from cspnet.data.classes import imagenet_classes
from cspnet.errors import ExportError, InvalidOptionError
from cspnet.export import export_model, read_metadata

import golden

ort = pytest.importorskip("onnxruntime")
ARCH = "cspresnet50"  # golden inputs 256x256 (the 288 -> 256 pipeline)


@pytest.fixture(scope="module")
def weights_file(recipe_checkpoint):
    return recipe_checkpoint(ARCH)


@pytest.fixture(scope="module")
def model(weights_file):
    return cspnet.get_model(ARCH, pretrained=weights_file)


@pytest.fixture(scope="module")
def tiny(tiny_classifier):
    """A small CSPResNet: the same code paths, a fraction of the export time."""
    return tiny_classifier(ARCH)


@pytest.fixture(scope="module")
def dynamic_onnx(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "dynamic.onnx"
    return export_model(model, path, "onnx", dynamic_batch=True)


def test_dynamic_batch_onnx_equals_pytorch_at_batch_1_and_3(model, dynamic_onnx):
    assert dynamic_onnx.max_abs_diff is not None and dynamic_onnx.max_abs_diff <= 1e-4
    assert dynamic_onnx.checked_batches == (1, 3)
    sess = ort.InferenceSession(str(dynamic_onnx.path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.shape == ["batch", 3, 256, 256] and out.shape == ["batch", 1000]
    x, logits = golden.golden_inputs(ARCH), golden.golden_logits(ARCH)
    for batch in (1, 3):  # mmpretrain#1273: one dynamic export, right at every batch size
        got = sess.run(["logits"], {"input": x[:batch].numpy()})[0]
        with torch.no_grad():
            want = model(x[:batch]).numpy()
        assert got.shape == (batch, 1000)
        assert np.abs(got - want).max() <= 1e-4
        assert np.abs(got - logits[:batch].numpy()).max() <= 1e-4


def test_onnx_metadata(model, dynamic_onnx):
    meta = ort.InferenceSession(str(dynamic_onnx.path), providers=["CPUExecutionProvider"]).get_modelmeta()
    props = {k: json.loads(v) for k, v in meta.custom_metadata_map.items()}
    assert props == read_metadata(dynamic_onnx.path) == dynamic_onnx.metadata
    assert props["classes"] == list(imagenet_classes())
    preset = model.transform.preset
    prep = props["preprocessing"]
    assert (prep["resize_short_edge"], prep["center_crop"], prep["mean"], prep["std"]) == (
        preset.resize, preset.crop, list(preset.mean), list(preset.std))
    assert prep["normalization_in_graph"] is False and prep["channel_order"] == "RGB"
    assert props["model"]["name"] == "cspresnet50.ra_in1k" and props["model"]["input"]["dtype"] == "float32"


@pytest.mark.slow
def test_onnx_runs_where_cspnet_cannot_be_imported(dynamic_onnx, tmp_path):
    # -I -S: no PYTHONPATH, no site processing, so no .pth file (the editable install of cspnet) is read;
    # only the site-packages folders themselves, for onnxruntime and numpy, are put on the path.
    dirs = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    code = f"""
import sys
sys.path.extend({dirs!r})
try:
    import cspnet
except ImportError:
    pass
else:
    sys.exit("cspnet is importable here: " + cspnet.__file__)
import numpy as np, onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], sess.run(["logits"], {{"input": np.load(sys.argv[2])}})[0])
"""
    x = golden.golden_inputs(ARCH)[:3].numpy()
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(dynamic_onnx.path), str(tmp_path / "x.npy"),
         str(tmp_path / "y.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(tmp_path / "y.npy") - golden.golden_logits(ARCH)[:3].numpy()).max() <= 1e-4


def test_cli_export_with_preprocessing_takes_raw_uint8(model, weights_file, tmp_path, capsys):
    out = tmp_path / "pre.onnx"
    rc = main(["export", ARCH, "--weights", str(weights_file), "--with-preprocessing", "--batch-size", "4",
               "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "uint8" in printed
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_inputs()[0].shape == [4, 3, 256, 256]
    pipe = golden.preprocess_name(ARCH)
    raw = np.stack([golden.golden_uint8(im, pipe) for im in golden.logits_meta()["images"]])  # (4, 3, 256, 256) uint8
    got = sess.run(["logits"], {"input": raw})[0]
    with torch.no_grad():
        want = model(model.transform.normalize(torch.from_numpy(raw))).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got - golden.golden_logits(ARCH).numpy()).max() <= 1e-4
    assert read_metadata(out)["preprocessing"]["normalization_in_graph"] is True


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_torch_formats_round_trip(tiny, tmp_path, fmt):
    path = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    res = export_model(tiny, path, fmt, dynamic_batch=True, image_size=64)
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-5 and res.checked_batches == (1, 3)
    loaded = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), tiny(x), atol=1e-5)
    meta = read_metadata(path)
    assert meta["classes"] is None and meta["model"]["format"] == fmt and meta["spec"]["num_classes"] == 10
    assert meta["model"]["input"]["shape"] == ["batch", 3, 64, 64]


def test_bad_options_and_failed_checks_write_nothing(tiny, tmp_path):
    with pytest.raises(InvalidOptionError, match="format"):
        export_model(tiny, tmp_path / "x", "tflite")
    with pytest.raises(InvalidOptionError, match="opset"):
        export_model(tiny, tmp_path / "x.onnx", opset=9)
    with pytest.raises(InvalidOptionError, match="image_size"):
        export_model(tiny, tmp_path / "x.onnx", image_size=(16, 16))
    with pytest.raises(InvalidOptionError, match="image_size"):
        export_model(tiny, tmp_path / "x.onnx", image_size=(64, 64, 3))
    # a check that cannot pass (onnxruntime and PyTorch round differently, by ~1e-7): nothing is written, and
    # an older file of that name is left alone
    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous")
    tiny.train()
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(tiny, old, image_size=64, atol=1e-12)
    assert old.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]  # no temporary file left behind
    assert tiny.training  # the mode it was in
    tiny.eval()


def test_cli_image_size_takes_one_or_two_numbers(capsys):
    """`--image-size 224` (one number: square) used to be refused by export_model as "give H or (H, W)"."""
    from cspnet.analysis import resolution
    from cspnet.cli import main

    assert resolution([224], "--image-size", minimum=32) == (224, 224)
    assert resolution([224, 160], "--image-size", minimum=32) == (224, 160)
    for bad in (["16"], ["64", "64", "3"]):
        assert main(["export", "cspresnet50", "--image-size", *bad]) == 2  # refused before any download
        assert "--image-size" in capsys.readouterr().err


def test_a_runtime_answering_nan_fails_the_check(tiny, tmp_path, monkeypatch):
    """A NaN from the exported file is a failed check (Python's max(0.0, nan) is 0.0: it used to pass)."""
    import cspnet.export as export

    monkeypatch.setattr(export, "_runner", lambda data, fmt: (lambda x: torch.full((x.shape[0], 10), float("nan")),
                                                              "a broken runtime"))
    with pytest.raises(ExportError, match="differs from PyTorch by nan"):
        export_model(tiny, tmp_path / "x.onnx", image_size=64)
    assert not (tmp_path / "x.onnx").exists()


def test_a_model_without_eval_preprocessing_exports_with_the_published_one_and_is_left_as_it_was(tiny_classifier,
                                                                                                  tmp_path):
    model = tiny_classifier("cspresnext50")
    model.transform = None  # as ImageClassifier(...) built by hand
    export_model(model, tmp_path / "m.pt", "torchscript", image_size=64, verify=False)
    assert model.transform is None
    prep = read_metadata(tmp_path / "m.pt")["preprocessing"]
    assert (prep["resize_short_edge"], prep["center_crop"]) == (256, 224)  # cspresnext50's published eval
