"""The robustness test sets, read from their publishers' layouts through the configs: ImageNet ReaL (ILSVRC2012 val
images + ``real.json``), ImageNetV2 (folders ``0``..``999``), ImageNet-R and ImageNet-A (200 WordNet-id folders,
scored over those classes only) and ImageNet-Sketch (1000 WordNet-id folders). Mini sets of tiny generated JPEGs
check the samples, labels, ``label_sets`` and ``class_subset``, the errors for folders or files that do not match,
and, end to end through ``run_test``, that top-1/top-5 equal those computed here from the model's own scores with
each set's rule (ReaL: any label of the set, empty sets left out; R/A: top-k over the subset's logits only)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cspnet
from cspnet.config import data_spec, eval_spec, load_config
from cspnet.data import datasets
from cspnet.data.classes import imagenet_synsets
from cspnet.data.datasets import REAL_IMAGES, ROBUSTNESS_SETS, imagenet_a_synsets, imagenet_r_synsets
from cspnet.data.transforms import EvalPreset, EvalTransform
from cspnet.errors import DatasetError
from test_datasets import write_layout

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {kind: REPO / "configs" / "cspnet" / f"cspdarknet50_8xb32_in1k-{suffix}.py" for kind, suffix in
           [("ImageNetReaL", "real"), ("ImageNetV2", "v2"), ("ImageNetR", "r"), ("ImageNetA", "a"),
            ("ImageNetSketch", "sketch")]}
BASES = {kind: REPO / "configs" / "_base_" / "datasets" / f"{name}_bs32.py" for kind, name in
         [("ImageNetReaL", "imagenet-real"), ("ImageNetV2", "imagenetv2"), ("ImageNetR", "imagenet-r"),
          ("ImageNetA", "imagenet-a"), ("ImageNetSketch", "imagenet-sketch")]}
SMALL = ["test_dataloader.dataset.pipeline.1.scale=64", "test_dataloader.dataset.pipeline.2.crop_size=56",
         "test_dataloader.num_workers=0"]
PRESET = EvalPreset(64, 56)
SYNSETS = imagenet_synsets()
INDEX = {s: i for i, s in enumerate(SYNSETS)}
# hendrycks/imagenet-r eval.py's own list of ImageNet-R's class indices (its comment under imagenet_r_mask)
PUBLISHED_R_INDICES = [
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99, 100, 105, 107, 113,
    122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163, 171, 172, 178, 187, 195, 199, 203, 207,
    208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289,
    291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344,
    347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435, 437,
    441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594,
    596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815, 820,
    824, 833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951,
    953, 954, 957, 963, 965, 967, 980, 981, 983, 988]
# natural-adv-examples eval.py's thousand_k_to_200: its first and last ImageNet indices
PUBLISHED_A_HEAD, PUBLISHED_A_TAIL = [6, 11, 13, 15, 17, 22, 23, 27, 30, 37], [971, 972, 980, 981, 984, 986, 987, 988]


def tiny_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` small JPEGs of different sizes and colours (a few hundred bytes each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        h, w = 24 + 3 * i, 40 - 2 * i
        arr = rng.integers(0, 255, (1, 1, 3)) * np.linspace(0.2, 1, w)[None, :, None] + rng.integers(0, 80, (h, w, 3))
        paths.append(folder / f"img{i}.jpg")
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def scores_of(model, images, preset: EvalPreset = PRESET) -> torch.Tensor:
    """Softmax ``(N, 1000)`` of each image, from the model directly (no loader, no folding)."""
    t = EvalTransform(preset)
    with torch.inference_mode():
        return model(t.normalize(torch.stack([t.to_uint8(p) for p in images]))).softmax(1)


def ranked(scores: torch.Tensor, i: int, rank: int, among: list[int] | None = None) -> int:
    """The class at ``rank`` in image ``i``'s prediction (over ``among`` only, when given)."""
    classes = torch.tensor(among) if among is not None else torch.arange(scores.shape[1])
    return int(classes[scores[i, classes].argsort(descending=True)[rank]])


# --- the rules, computed independently of cspnet's evaluator --------------------------------------------------------
def plain_accuracy(scores: torch.Tensor, labels: list[int], k: int) -> float:
    top = scores.topk(k, dim=1).indices
    return 100 * sum(y in t for t, y in zip(top.tolist(), labels)) / len(labels)


def real_accuracy(scores: torch.Tensor, sets: list[tuple[int, ...]], k: int) -> float:
    """ReaL: correct when one of the k best is in the image's set; images with an empty set are not counted."""
    top = scores.topk(k, dim=1).indices.tolist()
    scored = [(t, s) for t, s in zip(top, sets) if s]
    return 100 * sum(any(p in s for p in t) for t, s in scored) / len(scored)


def subset_accuracy(scores: torch.Tensor, labels: list[int], subset: tuple[int, ...], k: int) -> float:
    """ImageNet-R/-A: the k best among the subset's classes only (the other logits are never looked at)."""
    classes = torch.tensor(subset)
    top = classes[scores[:, classes].topk(k, dim=1).indices]
    return 100 * sum(y in t for t, y in zip(top.tolist(), labels)) / len(labels)


# --- mini sets in the publishers' layouts ---------------------------------------------------------------------------
def write_real_json(path: Path, sets: dict[int, list[int]], length: int = REAL_IMAGES) -> Path:
    """ReaL's layout: entry i (0-based) for ILSVRC2012_val_{i+1:08d}; the images not given get an empty list."""
    path.write_text(json.dumps([sets.get(n, []) for n in range(1, length + 1)]))
    return path


def write_folders(root: Path, images: list[Path], folders: list[str], extra: tuple[str, ...] = (),
                  suffix: str = ".jpg") -> Path:
    """``root/<folder>/<hash><suffix>`` per image (ImageNetV2's names are hashes), plus empty ``extra`` folders."""
    for p, folder in zip(images, folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / folder / f"{hashlib.sha1(p.read_bytes()).hexdigest()[:16]}{suffix}")
    for folder in extra:
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def build(kind: str, root: Path, *options: str):
    return data_spec(load_config(CONFIGS[kind], [f"test_dataloader.dataset.data_root={root}", *options]),
                     "test").build()


def labels_of(ds) -> list[int]:
    return [y for _, y in ds.samples]


@pytest.fixture(scope="module")
def pool(tmp_path_factory, recipe_checkpoint):
    """10 tiny JPEGs, the cspdarknet53 golden-recipe checkpoint, and the model's scores of each image."""
    images = tiny_jpegs(tmp_path_factory.mktemp("pool"), 10)
    ckpt = recipe_checkpoint("cspdarknet53")
    scores = scores_of(cspnet.get_model("cspdarknet53", pretrained=ckpt), images)
    return dict(images=images, ckpt=str(ckpt), scores=scores, by_hash={hashlib.sha1(p.read_bytes()).digest(): i
                                                                           for i, p in enumerate(images)})


def pool_scores(pool, ds) -> torch.Tensor:
    """The pool's scores of each sample of ``ds``, in the dataset's order (its files are copies of pool images)."""
    return pool["scores"][[pool["by_hash"][hashlib.sha1(Path(p).read_bytes()).digest()] for p, _ in ds.samples]]


# ReaL: image number -> the ranks (in that image's own prediction) of its label set. Image 1 and 6 have an empty set
# (left out), 2 and 5 several labels, one of them the top-1; 3, 8 miss at top-1 but not at top-5; 7 misses both.
REAL_RANKS = {1: [], 2: [0, 5], 3: [1], 4: [0], 5: [12, 0], 6: [], 7: [9], 8: [3, 2]}


def real_set(pool, root: Path) -> tuple[Path, dict[int, list[int]], list[int]]:
    """The official flat val folder (ILSVRC2012_val_0000000N.JPEG + the devkit labels) and real.json beside it."""
    images, scores = pool["images"][:8], pool["scores"][:8]
    original = [ranked(scores, i, 3) for i in range(8)]  # the ILSVRC labels: never the top-1
    write_layout(root, "flat", images, original)
    for i, p in enumerate(images, 1):  # the official name and extension
        (root / "val" / f"ILSVRC2012_val_{i:08d}{p.suffix}").rename(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    sets = {n: [ranked(scores, n - 1, r) for r in ranks] for n, ranks in REAL_RANKS.items()}
    write_real_json(root / "val" / "real.json", sets)
    return root, sets, original


def test_the_publishers_class_lists():
    assert [INDEX[s] for s in imagenet_r_synsets()] == PUBLISHED_R_INDICES
    a = [INDEX[s] for s in imagenet_a_synsets()]
    assert len(a) == len(set(a)) == 200 and a == sorted(a)
    assert a[:10] == PUBLISHED_A_HEAD and a[-8:] == PUBLISHED_A_TAIL
    assert len(set(a) & set(PUBLISHED_R_INDICES)) < 200  # a different 200


def test_every_config_resolves_to_its_set():
    for kind, path in CONFIGS.items():
        spec = eval_spec(load_config(path))
        assert spec.data.kind == kind and spec.model.arch == "cspdarknet53" and spec.model.num_classes == 1000
        assert (spec.model.eval.resize, spec.model.eval.crop) == (288, 256)  # the model config's test pipeline
        base = data_spec(load_config(BASES[kind]), "test")
        assert base == spec.data, kind  # the base dataset config and the model config describe one test set
    assert data_spec(load_config(CONFIGS["ImageNetReaL"]), "test").root == "data/imagenet"


def test_real_labels_beside_the_val_images(pool, tmp_path):
    root, sets, original = real_set(pool, tmp_path / "real")
    ds = build("ImageNetReaL", root)
    assert [Path(p).name for p, _ in ds.samples] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 9)]
    assert labels_of(ds) == original  # the samples keep their ILSVRC labels
    assert ds.label_sets == [tuple(sorted(sets[n])) for n in range(1, 9)]
    assert ds.label_sets[0] == () and len(ds.label_sets[1]) == 2 and ds.class_subset is None
    assert ds.describe().startswith("ImageNet ReaL: 8 images, 1000 classes")
    assert "2 image(s) without one left out" in ds.describe()
    # indices keep each image's own set; real.json given as ann_file (relative to data_root) or found in data_root
    sub = build("ImageNetReaL", root, "test_dataloader.dataset.indices=[7,1]")
    assert sub.label_sets == [ds.label_sets[7], ds.label_sets[1]] and labels_of(sub) == [original[7], original[1]]
    shutil.move(root / "val" / "real.json", root / "labels.json")
    assert build("ImageNetReaL", root, "test_dataloader.dataset.ann_file=labels.json").label_sets == ds.label_sets
    shutil.move(root / "labels.json", root / "real.json")
    assert build("ImageNetReaL", root).label_sets == ds.label_sets
    # any layout the ImageNet reader reads: a folder per class with the official file names
    folder = tmp_path / "folder"
    for (p, y) in ds.samples:
        (folder / "val" / SYNSETS[y]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / "val" / SYNSETS[y] / Path(p).name)
    shutil.copy(root / "real.json", folder / "val")
    again = build("ImageNetReaL", folder)
    assert sorted(zip(map(lambda s: Path(s[0]).name, again.samples), again.label_sets)) == sorted(
        zip(map(lambda s: Path(s[0]).name, ds.samples), ds.label_sets))


@pytest.mark.reliability("dataset-real-json-missing", "dataset-real-json-wrong-length", "dataset-real-json-bad-entry",
                         "dataset-real-json-huge", "dataset-real-unofficial-names")
def test_real_label_errors_name_the_file(pool, tmp_path, monkeypatch):
    root, sets, _ = real_set(pool, tmp_path / "real")
    real = root / "val" / "real.json"
    real.unlink()
    with pytest.raises(DatasetError, match=r"no ReaL labels: '.*val/real.json' or '.*real/real.json' does not exist. "
                                           r"Download real.json from https://github.com/google-research/reassessed"):
        build("ImageNetReaL", root)
    write_real_json(real, sets, length=49_999)
    with pytest.raises(DatasetError, match=r"ReaL label file '.*real.json' holds a list of 49999, not one entry per "
                                           r"ILSVRC2012 val image \(50000\); use ReaL's own real.json"):
        build("ImageNetReaL", root)
    real.write_text(json.dumps({"labels": []}))
    with pytest.raises(DatasetError, match="holds a JSON dict, not one entry per ILSVRC2012 val image"):
        build("ImageNetReaL", root)
    for bad in ([1000], ["n01440764"], 3, [True]):
        write_real_json(real, {**sets, 5: bad})
        with pytest.raises(DatasetError, match=r"'.*real.json' entry 4 \(ILSVRC2012_val_00000005\) is .*, not a list "
                                               r"of ImageNet indices 0..999"):
            build("ImageNetReaL", root)
    real.write_text("[[1], [2]")
    with pytest.raises(DatasetError, match="'.*real.json' is not JSON"):
        build("ImageNetReaL", root)
    write_real_json(real, sets)  # read no further than the bound (16 MiB; lowered here to keep the file small)
    huge = r"'.*real.json' is over [\d,]+ bytes \(real.json is 0.4 MB\), so it is not ReaL's labels"
    with monkeypatch.context() as m, pytest.raises(DatasetError, match=huge):
        m.setattr(datasets, "REAL_JSON_MAX_BYTES", real.stat().st_size - 1)
        build("ImageNetReaL", root)
    assert build("ImageNetReaL", root).label_sets[1] == tuple(sorted(sets[2]))
    # images that are not named by their ILSVRC2012 number cannot be matched to real.json
    meta = write_layout(tmp_path / "meta", "meta", pool["images"][:3], [0, 1, 2])
    write_real_json(meta / "val" / "real.json", {1: [0]})
    with pytest.raises(DatasetError, match=r"'.*img 0 img0.jpg' is not an ILSVRC2012 val image name "
                                           r"\(ILSVRC2012_val_00000001 .. _00050000\).*keep the official file names"):
        build("ImageNetReaL", meta)


def test_v2_and_sketch_label_by_folder(pool, tmp_path):
    images = pool["images"]
    v2 = write_folders(tmp_path / "v2", images[:4], ["0", "999", "10", "10"], suffix=".jpeg")
    ds = build("ImageNetV2", v2)
    assert sorted(labels_of(ds)) == [0, 10, 10, 999] and ds.label_sets is None and ds.class_subset is None
    assert all(str(y) == Path(p).parent.name for p, y in ds.samples)
    assert ds.describe().startswith("ImageNetV2: 4 images, 1000 classes")
    # a variant unpacked below one data_root: data_prefix names its folder
    shutil.copytree(v2, tmp_path / "all" / "imagenetv2-top-images-format-val")
    assert len(build("ImageNetV2", tmp_path / "all",
                     "test_dataloader.dataset.data_prefix=imagenetv2-top-images-format-val")) == 4
    sketch = write_folders(tmp_path / "sketch", images[:3], [SYNSETS[0], SYNSETS[999], SYNSETS[0]], suffix=".JPEG")
    ds = build("ImageNetSketch", sketch)
    assert sorted(labels_of(ds)) == [0, 0, 999] and ds.class_subset is None and ds.label_sets is None
    assert ds.describe().startswith("ImageNet-Sketch: 3 images")


@pytest.mark.parametrize("kind", ["ImageNetR", "ImageNetA"])
def test_r_and_a_have_the_class_subset_of_their_folders(pool, tmp_path, kind, caplog):
    wnids = imagenet_r_synsets() if kind == "ImageNetR" else imagenet_a_synsets()
    picked = [wnids[0], wnids[57], wnids[199]]
    root = write_folders(tmp_path / "part", pool["images"][:4], [picked[0], picked[2], picked[2], picked[0]],
                         extra=(picked[1],))  # an empty folder is one of the set's classes all the same
    with caplog.at_level(logging.WARNING, logger="cspnet"):
        ds = build(kind, root)
    assert ds.class_subset == tuple(sorted(INDEX[w] for w in picked))
    assert sorted(labels_of(ds)) == sorted([INDEX[picked[0]]] * 2 + [INDEX[picked[2]]] * 2)
    assert f"holds 3 of {ROBUSTNESS_SETS[kind]}'s 200 class folders" in caplog.text
    assert ds.describe().startswith(f"{ROBUSTNESS_SETS[kind]}: 4 images, 1000 classes")
    assert ds.describe().endswith("top-k over its 3 classes only")
    full = write_folders(tmp_path / "full", pool["images"][:1], [wnids[5]], extra=wnids)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cspnet"):
        ds = build(kind, full)
    assert ds.class_subset == tuple(INDEX[w] for w in wnids) and "class folders" not in caplog.text
    if kind == "ImageNetR":
        assert list(ds.class_subset) == PUBLISHED_R_INDICES


@pytest.mark.reliability("dataset-robust-folder-not-a-class", "dataset-robust-images-outside-folders",
                         "dataset-robust-missing-root", "dataset-robust-ann-file")
def test_folders_that_do_not_match_the_set_are_errors(pool, tmp_path):
    images = pool["images"][:2]
    cases = [  # (type, folder names, the message)
        ("ImageNetV2", ["0", "1000"], r"'.*/1000' is not an ImageNetV2 class folder: its folders are named by "
                                      r"ImageNet class index, 0 to 999"),
        ("ImageNetV2", ["0", "n01440764"], r"'.*/n01440764' is not an ImageNetV2 class folder"),
        ("ImageNetSketch", [SYNSETS[3], "n99999999"], r"'.*/n99999999' is not an ImageNet-1k class folder \(a WordNet "
                                                      r"id such as n01440764\)"),
        ("ImageNetR", [imagenet_r_synsets()[0], "n99999999"], r"'.*/n99999999' is not one of ImageNet-R's 200 class "
                                                              r"folders"),
        # a wnid of ImageNet but not of R's 200: ImageNet-A's folders read as ImageNet-R, say
        ("ImageNetR", [SYNSETS[0]], r"'.*/n01440764' is not one of ImageNet-R's 200 class folders \(the WordNet ids "
                                    r"of cspnet/data/imagenet_r_synsets.txt; ImageNet-A has another 200: "
                                    r"type='ImageNetA'\)"),
        ("ImageNetA", [imagenet_r_synsets()[0]], r"is not one of ImageNet-A's 200 class folders .*type='ImageNetR'"),
    ]
    for i, (kind, folders, message) in enumerate(cases):
        root = write_folders(tmp_path / str(i), images, folders)
        with pytest.raises(DatasetError, match=message):
            build(kind, root)
    flat = tmp_path / "flat"
    write_folders(flat, images[:1], ["3"])
    shutil.copy(images[1], flat / "stray.jpg")
    with pytest.raises(DatasetError, match=r"'.*flat' holds 1 image\(s\) directly \(stray.jpg, ...\): ImageNetV2 is "
                                           r"read as published: data_root .* is the folder holding its class folders"):
        build("ImageNetV2", flat)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"'.*empty' holds no class folders: ImageNet-Sketch is read as published"):
        build("ImageNetSketch", tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"ImageNet-R folder '.*nowhere' does not exist .*'Robustness test sets'"):
        build("ImageNetR", tmp_path / "nowhere")
    # the base ImageNet config's split='val' left in place: the folder it names does not exist
    with pytest.raises(DatasetError, match=r"ImageNet-A folder '.*/0/val' does not exist"):
        build("ImageNetA", tmp_path / "0", "test_dataloader.dataset.split=val")
    with pytest.raises(DatasetError, match=r"type='ImageNetSketch' reads its class folders as published and takes no "
                                           r"ann_file \('meta/val.txt'\)"):
        build("ImageNetSketch", tmp_path / "empty", "test_dataloader.dataset.ann_file=meta/val.txt")
    with pytest.raises(DatasetError, match=r"type='ImageNetR' has the 1000 ImageNet classes"):
        build("ImageNetR", tmp_path / "0", "test_dataloader.dataset.classes=[a,b]")


# --- end to end: run_test's numbers are the rule applied to the model's own scores ---------------------------------
def run(pool, kind: str, root: Path, *options: str):
    from cspnet.engine.distributed import init_distributed
    from cspnet.engine.evaluate import run_test

    said: list[str] = []
    spec = eval_spec(load_config(CONFIGS[kind], [*SMALL, f"test_dataloader.dataset.data_root={root}", *options]))
    done = run_test(spec, pool["ckpt"], init_distributed(device="cpu"), say=said.append)
    return done, "\n".join(said)


def metrics(done) -> tuple[float, float]:
    return done.result.metrics["accuracy/top1"], done.result.metrics["accuracy/top5"]


def test_real_top1_is_any_of_the_set_without_the_empty_sets(pool, tmp_path):
    root, _, original = real_set(pool, tmp_path / "real")
    ds = build("ImageNetReaL", root)
    scores = pool_scores(pool, ds)
    expected = tuple(real_accuracy(scores, ds.label_sets, k) for k in (1, 5))
    # the rule matters on this set: the original labels, or the empty sets counted as misses, give other numbers
    assert expected[0] != plain_accuracy(scores, labels_of(ds), 1) and expected == pytest.approx((50.0, 500 / 6))
    done, said = run(pool, "ImageNetReaL", root)
    assert metrics(done) == pytest.approx(expected, abs=1e-9)
    assert "data:  ImageNet ReaL: 8 images" in said


def test_v2_and_sketch_top1_from_the_folders_labels(pool, tmp_path):
    scores, images = pool["scores"], pool["images"]
    ranks = [0, 2, 0, 7, 40, 1, 0, 3, 900, 0]  # top-1 right 4 times of 10, top-5 7 times
    labels = [ranked(scores, i, r) for i, r in enumerate(ranks)]
    for kind, folders in (("ImageNetV2", [str(y) for y in labels]), ("ImageNetSketch", [SYNSETS[y] for y in labels])):
        root = write_folders(tmp_path / kind, images, folders)
        ds = build(kind, root)
        expected = tuple(plain_accuracy(pool_scores(pool, ds), labels_of(ds), k) for k in (1, 5))
        assert expected == (40.0, 70.0)
        done, said = run(pool, kind, root)
        assert metrics(done) == pytest.approx(expected, abs=1e-9), kind
        assert f"data:  {ROBUSTNESS_SETS[kind]}: 10 images" in said


@pytest.mark.parametrize("kind", ["ImageNetR", "ImageNetA"])
def test_r_and_a_top1_over_their_classes_only(pool, tmp_path, kind):
    wnids = imagenet_r_synsets() if kind == "ImageNetR" else imagenet_a_synsets()
    picked = [INDEX[w] for w in (wnids[1], wnids[30], wnids[77], wnids[120], wnids[160], wnids[198])]
    scores, images = pool["scores"], pool["images"]
    ranks = [0, 1, 0, 5, 2, 0, 3, 4, 1, 2]  # ranks among the 6 classes: top-1 right 3 times of 10, top-5 9 times
    labels = [ranked(scores, i, r, among=picked) for i, r in enumerate(ranks)]
    root = write_folders(tmp_path / kind, images, [SYNSETS[y] for y in labels],
                         extra=tuple(SYNSETS[y] for y in picked))
    ds = build(kind, root)
    assert ds.class_subset == tuple(sorted(picked))
    got = pool_scores(pool, ds)
    expected = tuple(subset_accuracy(got, labels_of(ds), ds.class_subset, k) for k in (1, 5))
    assert expected == (30.0, 90.0)
    assert plain_accuracy(got, labels_of(ds), 1) < expected[0]  # over all 1000 logits the top-1 would differ
    done, said = run(pool, kind, root)
    assert metrics(done) == pytest.approx(expected, abs=1e-9)
    assert f"data:  {ROBUSTNESS_SETS[kind]}: 10 images" in said and "top-k over its 6 classes only" in said
