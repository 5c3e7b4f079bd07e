"""ImageNet layouts (folder per class, meta/val.txt, the official flat val folder + its label files), custom
datasets, and the errors for bad data. ``make_images``/``write_layout`` are also used by test_evaluate.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cspnet.data.classes import imagenet_synsets
from cspnet.data.datasets import DataSpec, custom_dataset, ilsvrc2012_id_synsets, imagenet_dataset
from cspnet.data.transforms import EvalPreset, EvalTransform
from cspnet.errors import DatasetError, ImageError
from golden import DEMO

LAYOUTS = ("folder", "meta", "flat")


def make_images(folder: Path, n: int = 7) -> list[Path]:
    """The 4 demo images plus generated ones (PNG, BMP, upper-case extension), ``n`` in all."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [Path(shutil.copy(p, folder)) for p in sorted(DEMO.iterdir())][:n]
    rng = np.random.default_rng(0)
    for i in range(n - len(paths)):
        h, w = 90 + 17 * i, 120 - 9 * i
        arr = (np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.3, 1, (1, 1, 3)) + rng.integers(0, 60, (h, w, 3)))
        path = folder / f"gen{i}.{('PNG', 'bmp', 'jpeg')[i % 3]}"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, format={"PNG": "PNG", "bmp": "BMP"}.get(path.suffix[1:], "JPEG"))
        paths.append(path)
    return paths


def write_layout(root: Path, layout: str, images: list[Path], labels: list[int]) -> Path:
    """Lay ``images`` (with ``labels``, ImageNet indices) out under ``root`` as ``layout``; returns ``root``.

    ``folder``: ``val/<synset>/<name>``; ``meta``: flat ``val/`` (names with spaces) + ``meta/val.txt``;
    ``flat``: ``val/ILSVRC2012_val_0000000i.<ext>`` + the devkit's ``ILSVRC2012_validation_ground_truth.txt``.
    """
    synsets = imagenet_synsets()
    val = root / "val"
    val.mkdir(parents=True)
    if layout == "folder":
        for p, y in zip(images, labels):
            (val / synsets[y]).mkdir(exist_ok=True)
            shutil.copy(p, val / synsets[y] / p.name)
    elif layout == "meta":
        (root / "meta").mkdir()
        lines = []
        for i, (p, y) in enumerate(zip(images, labels)):
            name = f"img {i} {p.name}"  # spaces: the label is after the last one
            shutil.copy(p, val / name)
            lines.append(f"{name} {y}")
        (root / "meta" / "val.txt").write_text("\n".join(lines) + "\n")
    elif layout == "flat":
        ids = {s: i + 1 for i, s in enumerate(ilsvrc2012_id_synsets())}
        for i, p in enumerate(images, 1):
            shutil.copy(p, val / f"ILSVRC2012_val_{i:08d}{p.suffix}")
        (root / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[synsets[y]]}\n" for y in labels))
    else:
        raise ValueError(layout)
    return root


def by_name(ds) -> list[tuple[int, int]]:
    """(image bytes hash, label) in a layout-independent order."""
    return sorted((hash(Path(p).read_bytes()), y) for p, y in ds.samples)


LABELS = [0, 999, 65, 970, 230, 1, 500]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


def test_three_layouts_give_the_same_samples(images, tmp_path):
    sets = {}
    for layout in LAYOUTS:
        ds = imagenet_dataset(write_layout(tmp_path / layout, layout, images, LABELS), "val")
        assert len(ds) == 7 and ds.num_classes == 1000 and ds.classes[0] == "tench, Tinca tinca"
        sets[layout] = by_name(ds)
    assert sets["folder"] == sets["meta"] == sets["flat"] == sorted(
        (hash(p.read_bytes()), y) for p, y in zip(images, LABELS))
    ds = imagenet_dataset(tmp_path / "folder", "val")
    assert ds.layout == "folder per class"
    assert [Path(p).parent.name for p, _ in ds.samples] == sorted(Path(p).parent.name for p, _ in ds.samples)


def test_ilsvrc2012_id_table_matches_the_devkit():
    ids = ilsvrc2012_id_synsets()
    assert len(ids) == 1000 and sorted(ids) == list(imagenet_synsets())
    assert ids[:3] == ("n02119789", "n02100735", "n02110185")  # kit fox, English setter, Siberian husky
    # The first ten lines of the devkit's ILSVRC2012_validation_ground_truth.txt and the labels mmpretrain's
    # meta/val.txt gives the same images (ILSVRC2012_val_00000001..10).
    ground_truth = [490, 361, 171, 822, 297, 482, 13, 704, 599, 164]
    mmpretrain = [65, 970, 230, 809, 516, 57, 334, 415, 674, 332]
    index = {s: i for i, s in enumerate(imagenet_synsets())}
    assert [index[ids[g - 1]] for g in ground_truth] == mmpretrain


@pytest.mark.parametrize("fmt", ["kaggle", "synsets", "ann_file"])
def test_other_label_files_of_the_flat_val_folder(images, tmp_path, fmt):
    root = write_layout(tmp_path, "flat", images, LABELS)
    (root / "ILSVRC2012_validation_ground_truth.txt").unlink()
    synsets = imagenet_synsets()
    ann = None
    if fmt == "kaggle":
        rows = [f"ILSVRC2012_val_{i:08d},{synsets[y]} 1 2 30 40 {synsets[y]} 5 6 70 80" for i, y in enumerate(LABELS, 1)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    elif fmt == "synsets":
        (root / "imagenet_2012_validation_synset_labels.txt").write_text("\n".join(synsets[y] for y in LABELS))
    else:
        names = sorted(p.name for p in (root / "val").iterdir())
        (root / "labels.txt").write_text("".join(f"{n} {synsets[y]}\n" for n, y in zip(names, LABELS)))
        ann = "labels.txt"
    ds = imagenet_dataset(root, "val", ann_file=ann)
    assert [y for _, y in ds.samples] == LABELS


def test_subset_of_the_flat_val_folder(images, tmp_path):
    root = write_layout(tmp_path, "flat", images, LABELS)
    (root / "val" / f"ILSVRC2012_val_00000002{images[1].suffix}").unlink()
    ds = imagenet_dataset(root)
    assert [y for _, y in ds.samples] == LABELS[:1] + LABELS[2:]


def test_items_are_uint8_tensors_from_the_transform(images, tmp_path):
    t = EvalTransform(EvalPreset(40, 32))
    ds = imagenet_dataset(write_layout(tmp_path, "folder", images, LABELS), transform=t.to_uint8)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and str(x.dtype) == "torch.uint8" and y == ds.samples[0][1]


def test_extensions_like_mmpretrain(tmp_path):
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    for name in ("a.JPG", "b.jpeg", "c.Png", "d.ppm", "e.BMP", "f.pgm", "g.tif", "h.txt", "i.webp", "j.tiff"):
        (folder / name).write_bytes(b"")
    (folder / "sub").mkdir()
    (folder / "sub" / "k.jpg").write_bytes(b"")  # recursive, as mmpretrain
    ds = imagenet_dataset(tmp_path)
    assert sorted(Path(p).name for p, _ in ds.samples) == ["a.JPG", "b.jpeg", "c.Png", "d.ppm", "e.BMP", "f.pgm",
                                                           "g.tif", "k.jpg"]


def test_missing_root_names_it_and_the_layouts(tmp_path):
    with pytest.raises(DatasetError, match=r"ImageNet root '.*nowhere' does not exist.*meta/val.txt.*ILSVRC2012_val"):
        imagenet_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no ImageNet layout found under '.*empty'. Tried:\n.*meta/val.txt.*\n.*val"):
        imagenet_dataset(tmp_path / "empty")


def test_wrong_layouts(images, tmp_path):
    root = write_layout(tmp_path / "a", "folder", images, LABELS)
    (root / "val" / "cats").mkdir()
    with pytest.raises(DatasetError, match=r"'.*val/cats' is not an ImageNet-1k class folder.*CustomDataset"):
        imagenet_dataset(root)
    root = write_layout(tmp_path / "b", "flat", images, LABELS)
    (root / "ILSVRC2012_validation_ground_truth.txt").unlink()
    with pytest.raises(DatasetError, match=r"holds 7 images directly .* no labels.*ILSVRC2012_validation_ground_truth"):
        imagenet_dataset(root)
    shutil.copy(images[0], root / "val" / "extra.jpg")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n" * 7)
    with pytest.raises(DatasetError, match=r"'.*extra.jpg' has no label in"):
        imagenet_dataset(root)


@pytest.mark.parametrize("line, message", [
    ("x.jpg 1000", r"meta/val.txt' line 2: label 1000 is outside the class range 0..999"),
    ("x.jpg -1", r"line 2: label -1 is outside"),
    ("x.jpg", r"line 2: expected 'relative/path label'"),
    ("x.jpg cat", r"line 2: label 'cat' is neither an integer nor a synset"),
    ("x.jpg n99999999", r"line 2: 'n99999999' is not an ImageNet-1k synset"),
])
def test_bad_annotation_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "val.txt").write_text(f"ok.jpg 3\n{line}\n")
    with pytest.raises(DatasetError, match=message):
        imagenet_dataset(tmp_path)


def test_bad_ground_truth_line(images, tmp_path):
    root = write_layout(tmp_path, "flat", images, LABELS)
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("5\n1001\n")
    with pytest.raises(DatasetError, match=r"ground_truth.txt' line 2: expected an ILSVRC2012_ID between 1 and 1000"):
        imagenet_dataset(root)


def test_corrupt_and_missing_images_name_the_file(images, tmp_path):
    root = write_layout(tmp_path, "folder", images, LABELS)
    bad = root / "val" / "n01440764" / "zz_truncated.JPEG"
    bad.write_bytes(images[0].read_bytes()[:300])
    ds = imagenet_dataset(root, transform=EvalTransform(EvalPreset(40, 32)).to_uint8)
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(ImageError, match="zz_truncated.JPEG"):
        ds[index]
    (root / "meta").mkdir()
    (root / "meta" / "val.txt").write_text("missing.jpg 3\n")
    with pytest.raises(ImageError, match=r"missing.jpg' does not exist"):
        imagenet_dataset(root)[0]


def test_custom_dataset(images, tmp_path):
    for cls, idx in (("dog", [0, 1]), ("cat", [2]), ("bird", [3, 4])):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in idx:
            shutil.copy(images[i], tmp_path / "train" / cls)
    ds = custom_dataset(tmp_path, "train")
    assert ds.classes == ["bird", "cat", "dog"] and sorted(y for _, y in ds.samples) == [0, 0, 1, 2, 2]
    (tmp_path / "classes.txt").write_text("dog\ncat\nbird\nfish\n")
    spec = DataSpec("CustomDataset", str(tmp_path), None, data_prefix="train", classes="classes.txt")
    ds = spec.build()
    assert ds.num_classes == 4 and sorted(y for _, y in ds.samples) == [0, 0, 1, 2, 2]
    # mmengine's indices: the first N samples, or those
    assert DataSpec(**{**vars(spec), "indices": 2}).build().samples == ds.samples[:2]
    assert DataSpec(**{**vars(spec), "indices": (4, 0)}).build().samples == [ds.samples[4], ds.samples[0]]
    with pytest.raises(DatasetError, match=r"indices=\(9,\).*holds 5 images"):
        DataSpec(**{**vars(spec), "indices": (9,)}).build()
    with pytest.raises(DatasetError, match=r"train/dog' is not one of the 2 given classes \(cat, bird\)"):
        custom_dataset(tmp_path, "train", classes=["cat", "bird"])
    (tmp_path / "ann.txt").write_text("dog/" + images[0].name + " 5\n")
    with pytest.raises(DatasetError, match=r"ann.txt' line 1: label 5 is outside the class range 0..3"):
        custom_dataset(tmp_path, "train", ann_file="ann.txt", classes="classes.txt")
    with pytest.raises(DatasetError, match="type='CustomDataset'"):
        DataSpec("ImageNet", str(tmp_path), "train", classes=("a",)).build()
