"""Reliability of the data path (docs/reliability.md): work bounded by the output however small and extreme the
input, files that are not regular files, and annotation files as people write them.

Whatever could hang or exhaust memory on a regression runs in a subprocess with a timeout (and, for memory, an
address-space limit), so the suite fails instead of hanging or being killed. Every file is made under ``tmp_path``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cspnet
from cspnet.cli import main as cli
from cspnet.data.datasets import custom_dataset, imagenet_dataset
from cspnet.data.loader import DecodeForResize
from cspnet.data.resample import DecodedImage, DeviceResize
from cspnet.data.transforms import EvalPreset, EvalTransform, center_crop, is_extreme_aspect, resize_short_edge
from cspnet.errors import DatasetError, ImageError
from golden import DEMO
from test_datasets import make_images, write_layout
from test_evaluate import R50, SMALL, printed

reliability = pytest.mark.reliability
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def _png(width: int, height: int) -> bytes:
    """A real RGB PNG of ``width x height``: a repeating pattern, so a huge one is a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + (bytes([0, 64, 128, 192, 255, 32]) * (width // 2 + 1))[: 3 * width]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(
        b"IEND", b"")


def _isolated(tmp_path: Path, code: str, *args, timeout: float, memory_gib: float | None = None,
              with_cli: bool = False) -> dict:
    """Run ``code`` (which ends by printing ``RESULT <json>``) in a fresh interpreter in ``tmp_path``, optionally under
    an address-space limit and after ``_CLI``; a run past ``timeout`` is killed and fails the test."""
    limit = (f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({int(memory_gib * 2**30)},) * 2)\n"
             if memory_gib else "")
    program = limit + (_CLI if with_cli else "") + textwrap.dedent(code)
    try:
        proc = subprocess.run([sys.executable, "-c", program, *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"still running after {timeout} s (a hang): {(e.stderr or b'')[-2000:]!r}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


# The child's helper: a CLI call's exit code, stderr and seconds.
_CLI = """
import contextlib, io, json, sys, time
from cspnet.cli import main as cli

def run(*args):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        rc = cli([str(a) for a in args])
    return {"rc": rc, "err": err.getvalue(), "out": out.getvalue(), "s": time.perf_counter() - start}
"""


# ------------------------------------------------------------------------------------------ bounded work
@reliability("image-extreme-aspect", "train-extreme-aspect", "image-extreme-aspect-nearest")
def test_extreme_aspect_ratios_take_seconds_under_2_gib(tmp_path, recipe_checkpoint):
    (tmp_path / "wide.png").write_bytes(_png(100_000, 1))  # 288 x 28,800,000 at short edge 288: 24 GB in Pillow
    (tmp_path / "tall.png").write_bytes(_png(1, 100_000))
    assert (tmp_path / "wide.png").stat().st_size < 1000
    res = _isolated(tmp_path, """
        import numpy as np, cspnet
        from cspnet.data.loader import DecodeForResize
        from cspnet.data.resample import DecodedImage, DeviceResize
        from cspnet.data.train_transforms import TrainPipeline, TrainTransform
        from cspnet.data.transforms import EvalPreset, EvalTransform
        result = {"predict": run("predict", "wide.png", "tall.png", "--model", "cspresnet50", "--weights", sys.argv[1],
                                 "--device", "cpu", "--json", "--num-workers", "0")}
        t = cspnet.get_transform("cspresnet50")
        train = TrainTransform(TrainPipeline(crop=224, flip_prob=0.5))
        device = DecodeForResize(t.preset)
        for name in ("wide.png", "tall.png"):
            start = time.perf_counter()
            shapes = [tuple(t(name).shape), tuple(train(name, np.random.default_rng(0)).shape),
                      tuple(DeviceResize("cpu")(DecodedImage.collate([device(name)])).shape)]
            result[name] = {"shapes": shapes, "s": time.perf_counter() - start}
        try:  # Pillow's nearest resize has no exact cropped counterpart here: refused, not 24 GB
            EvalTransform(EvalPreset(288, 256, "nearest")).to_uint8("wide.png")
        except cspnet.errors.ImageError as e:
            result["nearest"] = str(e)
        result["nearest_normal"] = list(EvalTransform(EvalPreset(288, 256, "nearest")).to_uint8(sys.argv[2]).shape)
        print("RESULT " + json.dumps(result))
    """, recipe_checkpoint("cspresnet50"), DEMO / "dog.jpg", timeout=120, memory_gib=2, with_cli=True)
    predict = res["predict"]
    assert predict["rc"] == 0, predict["err"]
    assert [row["image"] for row in json.loads(predict["out"])] == ["wide.png", "tall.png"]
    assert predict["s"] < 30  # mostly loading the model; before: MemoryError (or 24 GB and minutes without a limit)
    for name in ("wide.png", "tall.png"):
        assert res[name]["shapes"] == [[3, 256, 256], [3, 224, 224], [1, 3, 256, 256]], name
        assert res[name]["s"] < 5, res[name]
    assert "image 'wide.png' of 100000 x 1 pixels would be resized to 28800000 x 288" in res["nearest"], res
    assert "another interpolation" in res["nearest"] and res["nearest_normal"] == [3, 256, 256]


@reliability("image-extreme-aspect-exact")
@pytest.mark.parametrize("preset", [EvalPreset(40, 32), EvalPreset(40, 32, "bilinear"), EvalPreset(24, 20, "lanczos")],
                         ids=str)
def test_extreme_aspect_ratios_keep_pillows_pixels(preset):
    rng = np.random.default_rng(0)
    t, device = EvalTransform(preset), DecodeForResize(preset)
    # wide and tall; enlarged along both axes, or shrunk along the long one (Pillow 13 then runs the vertical pass
    # first for the tall ones); the last is just over the bound
    for h, w in [(1, 3000), (3000, 1), (2, 700), (700, 3), (50, 20000), (20000, 50), (300, 9000), (9, 2000),
                 (preset.resize, preset.resize * 8 + 1)]:
        assert is_extreme_aspect(h, w, preset.resize)
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = np.asarray(center_crop(resize_short_edge(img, preset.resize, preset.interpolation), preset.crop))
        want = torch.from_numpy(want.copy()).permute(2, 0, 1)
        assert torch.equal(t.to_uint8(img), want), (h, w)
        item = device(img)
        assert item.pixels.shape[0] * item.pixels.shape[1] < 400 * 400  # only what the crop reads crosses
        assert torch.equal(DeviceResize("cpu")(DecodedImage.collate([item]))[0], want), (h, w)
    assert not is_extreme_aspect(preset.resize, preset.resize * 8, preset.resize)  # Pillow's own resize, as before


# ------------------------------------------------------------------------------ files that are not regular
@needs_fifo
@reliability("image-fifo", "eval-fifo-and-link-to-dot")
def test_a_fifo_is_refused_at_once_by_predict_and_skipped_by_evaluation(tmp_path, recipe_checkpoint):
    os.mkfifo(tmp_path / "x.jpg")  # nobody ever writes to it: open() for reading would wait for ever
    images = make_images(tmp_path / "images")
    root = write_layout(tmp_path / "data", "folder", images, [0] * len(images))
    folder = next((root / "val").iterdir())
    os.mkfifo(folder / "pipe.JPEG")
    (folder / "again").symlink_to(".")  # os.walk(followlinks=True) went 40 levels down it: 7 images counted 47 times
    ckpt = recipe_checkpoint("cspresnet50")
    res = _isolated(tmp_path, """
        ckpt, root = sys.argv[1:3]
        model = ["--model", "cspresnet50", "--weights", ckpt, "--device", "cpu"]
        test = ["test", sys.argv[3], ckpt, "--num-workers", "0", "--cfg-options", *sys.argv[5:],
                f"test_dataloader.dataset.data_root={root}"]
        result = {"warm_up": run("predict", sys.argv[4], *model)}  # imports and file caches: the timings below are the
        result.update(predict=run("predict", "x.jpg", *model),   # model's loading and the FIFO's refusal
                      predict_list=run("predict", sys.argv[4], "x.jpg", *model), test=run(*test),
                      test_skip=run(*test, "--skip-bad"))
        import cspnet
        try:
            cspnet.inference_model(cspnet.get_model("cspresnet50"), [sys.argv[4], "x.jpg"], num_workers=0)
        except cspnet.errors.ImageError as e:
            result["api"] = str(e)
        test[4] = "2"  # two loader workers
        result["test_skip_workers"] = run(*test, "--skip-bad")
        print("RESULT " + json.dumps(result))
    """, ckpt, root, R50, DEMO / "dog.jpg", *SMALL, timeout=150, with_cli=True)
    assert res["warm_up"]["rc"] == 0, res["warm_up"]["err"]
    assert "'x.jpg' is a FIFO (named pipe), not a regular file" in res["api"]
    for key in ("predict", "predict_list"):
        r = res[key]
        assert r["rc"] == 2 and re.search(r"cspnet predict: error: .*'x.jpg' is a FIFO", r["err"]), r
        assert r["s"] < 5, r
    assert res["test"]["rc"] == 2 and "pipe.JPEG' is a FIFO" in res["test"]["err"], res["test"]
    assert "--skip-bad" in res["test"]["err"]
    for key in ("test_skip", "test_skip_workers"):
        out = res[key]["out"]
        assert res[key]["rc"] == 0, res[key]["err"]
        printed(out)
        assert "skipped 1 unreadable image(s):" in out and "pipe.JPEG" in out and "over 7 of 8 images" in out, out
    assert "not listed again" in res["test"]["err"] + res["test"]["out"]  # the link to '.' warned about


@reliability("image-dangling-symlink", "image-symlink-loop", "image-device", "image-socket", "image-path-through-file")
def test_special_files_are_refused_by_name(tmp_path, tiny_classifier):
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "null.jpg").symlink_to(os.devnull)
    (tmp_path / "file.jpg").write_bytes((DEMO / "dog.jpg").read_bytes())
    cases = {"gone.jpg": "is a symbolic link to '.*deleted.jpg', which does not exist",
             "loop.jpg": "is a symbolic link loop", "null.jpg": "is a character device, not a regular file",
             "file.jpg/x.jpg": "does not exist \\(a part of its path is a file"}
    if hasattr(socket, "AF_UNIX") and len(str(tmp_path / "s.jpg")) < 100:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(tmp_path / "s.jpg"))
        cases["s.jpg"] = "is a socket, not a regular file"
        server.close()  # the socket file stays
    model = tiny_classifier()
    for name, fragment in cases.items():
        path = tmp_path / name
        with pytest.raises(ImageError, match=fragment) as e:
            cspnet.inference_model(model, [DEMO / "dog.jpg", path], num_workers=0)
        assert str(path) in str(e.value), name
    assert cspnet.inference_model(model, tmp_path / "file.jpg")["pred_scores"].shape == (10,)


@reliability("image-url")
@pytest.mark.parametrize("url", ["https://example.com/cat.jpg", "http://127.0.0.1:9/x.png", "HTTPS://EXAMPLE.COM/A.JPG"])
def test_a_url_as_an_image_says_download_it_first(url, tiny_classifier, recipe_checkpoint, capsys):
    with pytest.raises(ImageError, match="is a URL: cspnet reads local files and does not download them; download it"
                                         " first") as e:
        cspnet.inference_model(tiny_classifier(), url)
    assert repr(url) in str(e.value)  # as given: not folded to 'https:/...' as a path would be
    if url.startswith("https://example"):
        assert cli(["predict", url, "--model", "cspresnet50", "--weights", str(recipe_checkpoint("cspresnet50")),
                    "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"cspnet predict: error: image file {url!r} is a URL" in err and f"curl -LO {url}" in err


@reliability("image-unreadable")
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "secret.jpg"
    path.write_bytes((DEMO / "dog.jpg").read_bytes())
    path.chmod(0)
    with pytest.raises(ImageError, match="secret.jpg': permission denied"):
        cspnet.load_image(path)


_LISTING = """
import json, logging, os, sys
from cspnet.data.datasets import custom_dataset, imagenet_dataset
from cspnet.errors import DatasetError

warnings = []
logging.getLogger("cspnet").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: warnings.append(r.getMessage())})())
result = {}
for case in sys.argv[1:]:
    kind, root = case.split("=", 1)
    warnings.clear()
    try:
        ds = custom_dataset(root) if kind == "custom" else imagenet_dataset(root)
        result[root] = {"n": len(ds), "names": sorted(os.path.relpath(p, root) for p, _ in ds.samples),
                        "labels": sorted({y for _, y in ds.samples}), "warnings": list(warnings)}
    except DatasetError as e:
        result[root] = {"error": str(e)}
print("RESULT " + json.dumps(result))
"""


@reliability("dataset-symlink-to-dot", "dataset-symlink-loops", "dataset-link-into-another-class",
             "dataset-classes-one-folder", "dataset-dangling-link", "dataset-label-file-not-regular")
def test_folder_walks_follow_each_folder_once(tmp_path):
    images = make_images(tmp_path / "images")
    roots = {}

    def custom(name):
        root = tmp_path / name
        for cls in ("cat", "dog"):
            (root / cls).mkdir(parents=True)
        for i, p in enumerate(images):
            (root / ("cat", "dog")[i % 2] / p.name).write_bytes(p.read_bytes())
        roots[name] = ("custom", root)
        return root

    (custom("dot") / "cat" / "here").symlink_to(".")
    loops = custom("loops")
    (loops / "cat" / "a").symlink_to(".")
    (loops / "cat" / "b").symlink_to("..")  # two links: 2^40 paths for os.walk(followlinks=True), never ending
    (loops / "dog" / "up").symlink_to("../cat")
    (custom("cross") / "cat" / "dogs").symlink_to("../dog")
    (custom("twins") / "kitten").symlink_to("cat")
    outside = tmp_path / "extra"  # a folder elsewhere, linked in: followed, as mmpretrain does
    outside.mkdir()
    (outside / "more.png").write_bytes(images[-1].read_bytes())
    (custom("linked") / "dog" / "extra").symlink_to(outside)
    (tmp_path / "linked" / "dog" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    flat = write_layout(tmp_path / "flat", "flat", images, [0] * len(images))
    (flat / "val" / "ILSVRC2012_val_00000008.JPEG").symlink_to(tmp_path / "unmounted.JPEG")
    with open(flat / "ILSVRC2012_validation_ground_truth.txt", "a") as f:
        f.write("1\n")
    roots["flat"] = ("imagenet", flat)
    meta = write_layout(tmp_path / "meta", "meta", images, [0] * len(images))
    (meta / "meta" / "val.txt").unlink()
    if hasattr(os, "mkfifo"):
        os.mkfifo(meta / "meta" / "val.txt")
        roots["meta"] = ("imagenet", meta)
    res = _isolated(tmp_path, _LISTING, *(f"{k}={r}" for k, r in roots.values()), timeout=60)
    res = {name: res[str(root)] for name, (_, root) in roots.items()}

    for name in ("dot", "loops"):
        assert res[name]["n"] == len(images) and res[name]["labels"] == [0, 1], res[name]  # 7 images, not 47
        assert res[name]["warnings"] and all("not listed again" in w for w in res[name]["warnings"]), res[name]
    assert len(res["loops"]["warnings"]) == 3
    assert res["cross"]["n"] == len(images) and "dogs" in res["cross"]["warnings"][0]  # no dog labelled cat
    assert re.search(r"'.*twins/kitten' and '.*twins/cat' are one folder", res["twins"]["error"])
    assert res["linked"]["n"] == len(images) + 2  # the linked folder's image and the dangling link
    assert {"dog/extra/more.png", "dog/gone.jpg"} <= set(res["linked"]["names"])
    assert res["flat"]["n"] == len(images) + 1 and "val/ILSVRC2012_val_00000008.JPEG" in res["flat"]["names"]
    if "meta" in res:
        assert re.search(r"annotation file '.*meta/val.txt' is a FIFO", res["meta"]["error"])
    # and the dangling links are named when read
    ds = custom_dataset(tmp_path / "linked")
    with pytest.raises(ImageError, match=r"gone.jpg' is a symbolic link to '.*deleted.jpg', which does not exist"):
        ds[[p for p, _ in ds.samples].index(str(tmp_path / "linked" / "dog" / "gone.jpg"))]


# ------------------------------------------------------------------------------------------ annotation files
def _same_samples(a, b):
    assert a.samples == b.samples and a.layout == b.layout


@reliability("dataset-ann-bom-crlf-spaces", "dataset-devkit-bom", "dataset-ann-utf16")
def test_annotation_files_as_people_write_them(tmp_path):
    images = make_images(tmp_path / "images")
    labels = [0, 999, 65, 970, 230, 1, 500]
    meta = write_layout(tmp_path / "meta", "meta", images, labels)
    flat = write_layout(tmp_path / "flat", "flat", images, labels)
    clean_meta, clean_flat = imagenet_dataset(meta), imagenet_dataset(flat)
    val, gt = meta / "meta" / "val.txt", flat / "ILSVRC2012_validation_ground_truth.txt"
    lines, ids = val.read_text().splitlines(), gt.read_text().splitlines()

    # Windows Notepad: a BOM, CRLF; a spreadsheet's trailing spaces, tabs between path and label, blank lines
    messy = [f"{p.rsplit(' ', 1)[0]}{sep}{p.rsplit(' ', 1)[1]}{tail}" for p, sep, tail in
             zip(lines, [" ", "\t", "  ", " \t ", " ", "\t", " "], ["  ", "", "\t", " ", "", " ", ""])]
    val.write_bytes(codecs.BOM_UTF8 + "\r\n".join(messy[:3] + ["", "   "] + messy[3:]).encode() + b"\r\n")
    _same_samples(imagenet_dataset(meta), clean_meta)
    val.write_bytes("\r".join(lines).encode())  # classic Mac line ends
    _same_samples(imagenet_dataset(meta), clean_meta)
    val.write_bytes(codecs.BOM_UTF16_LE + "\r\n".join(lines).encode("utf-16-le"))  # Notepad's "Unicode"
    _same_samples(imagenet_dataset(meta), clean_meta)

    gt.write_bytes(codecs.BOM_UTF8 + "\r\n".join(f"{i} " for i in ids).encode())  # the BOM hid the devkit format
    ds = imagenet_dataset(flat)
    _same_samples(ds, clean_flat)
    assert ds.layout == "flat folder + devkit ground truth (ILSVRC2012_IDs)"

    classes = tmp_path / "classes.txt"
    classes.write_bytes(codecs.BOM_UTF8 + b"tabby\r\nbeagle  \r\n")
    custom = tmp_path / "custom"
    for name in ("tabby", "beagle"):
        (custom / name).mkdir(parents=True)
        (custom / name / "a.png").write_bytes(images[4].read_bytes())
    assert list(custom_dataset(custom, classes=classes).classes) == ["tabby", "beagle"]


@reliability("dataset-ann-duplicate-line", "dataset-flat-duplicate-number")
def test_an_image_listed_twice_is_refused_naming_the_lines(tmp_path, capsys, recipe_checkpoint):
    images = make_images(tmp_path / "images")
    meta = write_layout(tmp_path / "meta", "meta", images, [0] * len(images))
    val = meta / "meta" / "val.txt"
    lines = val.read_text().splitlines()
    first = lines[2].rsplit(" ", 1)[0]
    val.write_text("\n".join(lines + [f"./{first}\t5"]) + "\n")  # the same file, written another way
    args = ["test", R50, str(recipe_checkpoint("cspresnet50")), "--num-workers", "0", "--cfg-options", *SMALL,
            f"test_dataloader.dataset.data_root={meta}"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"meta/val.txt' lines 3 and 8 both list './{first}'" in err and "count twice" in err, err
    with pytest.raises(DatasetError, match=r"lines 1 and 2 both list 'a.png'"):
        val.write_text("a.png 1\na.png 1\n")
        imagenet_dataset(meta)

    kaggle = write_layout(tmp_path / "kaggle", "flat", images, [0] * len(images))
    (kaggle / "ILSVRC2012_validation_ground_truth.txt").unlink()
    rows = [f"ILSVRC2012_val_{i:08d},n01440764 1 2 3 4" for i in (1, 2, 3, 4, 5, 6, 7, 3)]
    (kaggle / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"LOC_val_solution.csv' lines 4 and 9 both label 'ILSVRC2012_val_00000003'"):
        imagenet_dataset(kaggle)

    flat = write_layout(tmp_path / "flat", "flat", images, [0] * len(images))
    (flat / "val" / "ILSVRC2012_val_00000002.bmp").write_bytes(images[5].read_bytes())
    with pytest.raises(DatasetError, match=r"ILSVRC2012_val_00000002.*' and 'ILSVRC2012_val_00000002.*' are both "
                                           r"image 2 of"):
        imagenet_dataset(flat)
