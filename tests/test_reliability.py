"""The corpus of bad inputs and faults of docs/reliability.md: each case's behaviour, deliberately tested.

Every test here carries ``@pytest.mark.reliability(<case ids>)``; tests/test_reliability_doc.py checks that each case
id has exactly one line in docs/reliability.md and each line a test.
"""

import multiprocessing as mp
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cspnet
from cspnet.cli import main as cli
from cspnet.errors import CheckpointError, DownloadError, ImageError
from cspnet.weights import convert
from cspnet.weights.files import read_weights, save_state_dict
from cspnet.weights.sources import download
from golden import DEMO, recipe_state_dict
from httpserver import FileServer, unused_port

reliability = pytest.mark.reliability


# --------------------------------------------------------------------------------------------------- images
def _png_declaring(width: int, height: int) -> bytes:
    """A PNG header that declares a huge image and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@reliability("image-zero-byte", "image-text-as-jpg", "image-truncated-jpeg", "image-decompression-bomb",
             "image-missing", "image-directory")
@pytest.mark.parametrize(
    "case, make, fragment",
    [
        ("zero.jpg", lambda p: p.write_bytes(b""), "not an image"),
        ("notes.jpg", lambda p: p.write_text("shopping list: eggs"), "not an image"),
        ("cut.jpg", lambda p: p.write_bytes((DEMO / "bird.JPEG").read_bytes()[:20000]), "corrupt or truncated"),
        ("bomb.png", lambda p: p.write_bytes(_png_declaring(40000, 40000)), "decompression bomb"),
        ("missing.jpg", lambda p: None, "does not exist"),
        ("folder.jpg", lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_images_refused_by_name(tmp_path, case, make, fragment):
    path = tmp_path / case
    make(path)
    model = cspnet.get_model("cspresnet50")
    with pytest.raises(ImageError, match=fragment) as e:
        cspnet.inference_model(model, [DEMO / "dog.jpg", path])
    assert str(path) in str(e.value)


@reliability("image-16bit-png", "image-cmyk-jpeg", "image-unicode-path")
def test_unusual_but_valid_images_work(tmp_path):
    rgb = cspnet.load_image(DEMO / "dog.jpg").resize((96, 64))
    gray16 = Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
    weird = tmp_path / "dossier d'été 猫" / "chat à lunettes.png"
    weird.parent.mkdir()
    gray16.save(tmp_path / "deep.png")
    rgb.convert("CMYK").save(tmp_path / "print.jpg")
    rgb.save(weird)
    model = cspnet.get_model("cspresnet50")
    results = cspnet.inference_model(model, [tmp_path / "deep.png", tmp_path / "print.jpg", weird])
    assert [r["pred_scores"].shape for r in results] == [(1000,)] * 3
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really 16-bit on disk
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    # the 16-bit range maps to 8 bits (not clipped at 255): the very pixels of the 8-bit image
    assert np.array_equal(np.asarray(cspnet.load_image(tmp_path / "deep.png")), np.asarray(rgb.convert("L").convert("RGB")))


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def good_ckpt(recipe_checkpoint):
    return recipe_checkpoint("cspresnet50", "timm", ".safetensors")


@reliability("checkpoint-truncated")
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_checkpoint(recipe_checkpoint, tmp_path, suffix):
    src = recipe_checkpoint("cspresnet50", "timm", suffix)
    bad = tmp_path / f"cut{suffix}"
    bad.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*Delete it") as e:
        cspnet.get_model("cspresnet50", pretrained=bad)
    assert str(bad) in str(e.value)


@reliability("checkpoint-other-architecture")
def test_checkpoint_of_another_architecture(good_ckpt):
    with pytest.raises(CheckpointError, match=r"holds cspresnet50 weights, not cspresnext50.*get_model\('cspresnet50'"):
        cspnet.get_model("cspresnext50", pretrained=good_ckpt)


@reliability("checkpoint-extra-or-missing-keys")
def test_checkpoint_with_extra_and_missing_keys(tmp_path):
    sd = convert.convert_state_dict(recipe_state_dict("cspresnet50"), "cspresnet50", "mmpretrain")
    sd["backbone.stages.0.se.fc.weight"] = torch.zeros(4, 4)
    del sd["backbone.stages.3.final_conv.bn.running_var"]
    path = save_state_dict(sd, tmp_path / "odd.pth", "mmpretrain")
    with pytest.raises(CheckpointError) as e:
        cspnet.get_model("cspresnet50", pretrained=path)
    assert str(path) in str(e.value)
    assert "missing 1: backbone.stages.3.conv_transition.bn.running_var" in str(e.value)
    assert "unexpected 1: backbone.stages.0.se.fc.weight" in str(e.value)


class _Payload:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@reliability("checkpoint-malicious-pickle")
@pytest.mark.parametrize("entry", ["get_model", "convert", "test_loader"])
def test_pickle_that_would_create_a_file(tmp_path, entry):
    target = tmp_path / "created-by-pickle"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": recipe_state_dict("cspresnet50"), "meta": _Payload(target)}, evil)
    if entry == "get_model":
        with pytest.raises(CheckpointError, match="refused to load.*could run code"):
            cspnet.get_model("cspresnet50", pretrained=evil)
    elif entry == "convert":
        assert cli(["convert", str(evil), str(tmp_path / "out.pth"), "--to", "timm"]) == 2
        assert not (tmp_path / "out.pth").exists()
    else:
        with pytest.raises(CheckpointError):
            read_weights(evil)
    assert not target.exists()


@reliability("checkpoint-missing-file")
def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        cspnet.get_model("cspresnet50", pretrained=tmp_path / "nope.pth")


# ------------------------------------------------------------------------------------------------ downloads
@pytest.fixture()
def served(good_ckpt, tmp_path):
    d = tmp_path / "srv"
    d.mkdir()
    shutil.copy(good_ckpt, d / "w.safetensors")
    with FileServer(d) as server:
        yield server, tmp_path / "cache"


def _assert_cache_clean(cache: Path):
    assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())


@reliability("download-http-500")
def test_download_http_500(served):
    server, cache = served
    with pytest.raises(DownloadError, match="HTTP 500"):
        download(server.url("w.safetensors", "status/500"), cache / "w.safetensors")
    _assert_cache_clean(cache)


@reliability("download-stall")
def test_download_stall_times_out(served, monkeypatch):
    server, cache = served
    monkeypatch.setenv("CSPNET_DOWNLOAD_TIMEOUT", "1")
    with pytest.raises(DownloadError, match="no data for 1 s"):
        download(server.url("w.safetensors", "stall"), cache / "w.safetensors")
    _assert_cache_clean(cache)


@reliability("download-cut-mid-transfer")
def test_download_cut_mid_transfer(served):
    server, cache = served
    with pytest.raises(DownloadError, match="cut off"):
        download(server.url("w.safetensors", "truncate"), cache / "w.safetensors")
    _assert_cache_clean(cache)


@reliability("download-hash-mismatch")
def test_download_hash_mismatch_keeps_old_file(served):
    server, cache = served
    cache.mkdir()
    (cache / "w-abcdef12.safetensors").write_bytes(b"what the user had")
    with pytest.raises(DownloadError, match="promises abcdef12"):
        download(server.url("w.safetensors"), cache / "w-abcdef12.safetensors", "abcdef12")
    assert [p.name for p in cache.iterdir()] == ["w-abcdef12.safetensors"]
    assert (cache / "w-abcdef12.safetensors").read_bytes() == b"what the user had"


@reliability("download-unreachable-host")
def test_download_unreachable(tmp_path):
    with pytest.raises(DownloadError, match="cannot reach"):
        download(f"http://127.0.0.1:{unused_port()}/w.pth", tmp_path / "c" / "w.pth")
    _assert_cache_clean(tmp_path / "c")


def _download_worker(url, dst, q):
    try:
        download(url, dst, progress=False)
        q.put("ok")
    except Exception as e:  # reported to the parent
        q.put(repr(e))


@pytest.mark.slow
@reliability("download-concurrent")
def test_two_processes_download_the_same_file(served, good_ckpt):
    server, cache = served
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_download_worker, args=(server.url("w.safetensors"), cache / "w.safetensors", q))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [q.get(timeout=5) for _ in procs]
    assert results == ["ok", "ok"]
    assert [p.name for p in cache.iterdir()] == ["w.safetensors"]
    assert (cache / "w.safetensors").read_bytes() == good_ckpt.read_bytes()


# ------------------------------------------------------------------------------------------ evaluation, training
@reliability("eval-skip-bad-corpus")
def test_evaluation_skips_the_bad_image_corpus(tmp_path, capsys, recipe_checkpoint):
    from test_evaluate import R50, SMALL, printed
    from test_datasets import make_images, write_layout

    images = make_images(tmp_path / "images")
    root = write_layout(tmp_path / "folder", "folder", images, [0] * len(images))
    folder = next((root / "val").iterdir())
    (folder / "zero.JPEG").write_bytes(b"")
    (folder / "notes.JPEG").write_text("not a picture")
    (folder / "cut.JPEG").write_bytes((DEMO / "bird.JPEG").read_bytes()[:20000])
    (folder / "bomb.png").write_bytes(_png_declaring(40000, 40000))
    args = ["test", R50, str(recipe_checkpoint()), "--num-workers", "0", "--cfg-options", *SMALL,
            f"test_dataloader.dataset.data_root={root}"]
    assert cli(args) == 2  # without --skip-bad: an error naming a bad file
    assert "--skip-bad" in capsys.readouterr().err
    assert cli([*args, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    printed(out)
    assert "skipped 4 unreadable image(s):" in out and f"over {len(images)} of {len(images) + 4} images" in out
    for name in ("zero.JPEG", "notes.JPEG", "cut.JPEG", "bomb.png"):
        assert name in out
