"""Image classification datasets on disk: ImageNet-1k in its usual layouts, and your own folder-per-class data.

:func:`imagenet_dataset` reads ``root/{split}`` (README, "Evaluate on ImageNet"), from the first layout found:

1. an annotation file, ``ann_file=`` or ``root/meta/{split}.txt`` (mmpretrain's): ``relative/path label`` lines, the
   label a synset-sorted index or a WordNet id, split on the last space (paths may contain spaces);
2. folder per class, ``root/{split}/n01440764/*.JPEG``: the label is the synset's index among the 1000
   (:func:`cspnet.data.classes.imagenet_synsets`), not among the folders present, so a subset keeps its labels;
3. the official flat folder ``root/{split}/ILSVRC2012_val_*.JPEG``, labelled by one of :data:`VAL_LABEL_FILES` (or
   ``ann_file=``) found in ``root``, ``root/{split}`` or ``root/ILSVRC2012_devkit_t12/data``, matched by the number
   in the image's name (so a subset works).

Images are the files with mmpretrain's extensions (:data:`IMG_EXTENSIONS`, any case), found recursively, sorted.
Symbolic links to folders are followed, but no folder is listed twice (by device and inode): a link to ``.`` or to
another class folder is skipped with a warning, where following it counted images many times (or never ended). An
entry with an image's name that is not a regular file (a FIFO, a dangling link) stays in the list, so reading it
names it (an error, or a skipped image with ``--skip-bad``) instead of the count silently shrinking.

Label files are read as people write them: UTF-8 with or without a byte-order mark, or UTF-16 with one; LF, CRLF or
CR line ends; spaces or tabs around the label. A path listed twice is refused, naming both lines: it would count
twice in the metrics.

The robustness test sets (:data:`ROBUSTNESS_SETS`, README "Robustness test sets") are read from the layouts their
publishers ship, with no conversion: :func:`real_dataset` (the ILSVRC2012 val images as above, plus ReaL's
``real.json``), and :func:`class_folder_dataset` for ImageNetV2 (folders ``0`` .. ``999``, the class index),
ImageNet-R and ImageNet-A (200 WordNet-id folders each) and ImageNet-Sketch (1000 WordNet-id folders). Every label is
an ImageNet-1k index, so a 1000-class model is evaluated on them as it is."""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset

from ..errors import DatasetError
from .classes import _read, imagenet_classes, imagenet_synsets
from .transforms import check_regular_file, load_image, open_regular_file

log = logging.getLogger("cspnet")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif")
_SYNSET = re.compile(r"n\d{8}")
_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")
# Label files of the flat validation folder, looked for in this order: the devkit's (line i: image i's ILSVRC2012_ID),
# Kaggle's (``ImageId,PredictionString`` rows, the string starting with the synset), TensorFlow's (line i: a synset).
VAL_LABEL_FILES = ("ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv",
                   "imagenet_2012_validation_synset_labels.txt")
# The robustness test sets: the dataset type a config names (``test_dataloader.dataset.type``) -> the set's name.
# Neither mmpretrain nor timm registers dataset types for them (timm names its results files imagenet-real,
# imagenetv2-matched-frequency, imagenet-r, imagenet-a and sketch), so the names follow the ImageNet type's spelling.
ROBUSTNESS_SETS = {"ImageNetReaL": "ImageNet ReaL", "ImageNetV2": "ImageNetV2", "ImageNetR": "ImageNet-R",
                   "ImageNetA": "ImageNet-A", "ImageNetSketch": "ImageNet-Sketch"}
IMAGENET_KINDS = ("ImageNet", *ROBUSTNESS_SETS)  # the dataset types labelled by the 1000 ImageNet-1k classes
REAL_JSON = "real.json"  # google-research/reassessed-imagenet's file: entry i labels ILSVRC2012_val_{i+1:08d}
REAL_IMAGES = 50_000
# real.json is 0.4 MB; a file this much larger is not it, and json.loads would hold all of it in memory
REAL_JSON_MAX_BYTES = 16 * 2**20


def ilsvrc2012_id_synsets() -> tuple[str, ...]:
    """WNID of each ILSVRC2012_ID (``[0]`` is id 1): the devkit's ``meta.mat`` order, e.g. 1 = n02119789."""
    return _read("ilsvrc2012_id_synsets.txt")


def imagenet_r_synsets() -> tuple[str, ...]:
    """ImageNet-R's 200 WordNet ids, in ImageNet-1k index order (hendrycks/imagenet-r ``eval.py``'s
    ``imagenet_r_wnids``; indices 1, 2, 4, 6, ...)."""
    return _read(_SUBSET_TABLES["ImageNetR"])


def imagenet_a_synsets() -> tuple[str, ...]:
    """ImageNet-A's 200 WordNet ids, in ImageNet-1k index order (hendrycks/natural-adv-examples ``eval.py``'s
    ``indices_in_1k``; indices 6, 11, 13, 15, ...)."""
    return _read(_SUBSET_TABLES["ImageNetA"])


@dataclass
class ImageDataset(Dataset):
    """A list of ``(path, label)`` samples with their class names; ``dataset[i]`` -> ``(transform(path), label)``
    (without a transform, the RGB ``PIL.Image``). ``layout``: where the labels came from; ``source``: what was read;
    ``name``: the test set it is, when it is one of :data:`ROBUSTNESS_SETS` (else ``''``).

    Two attributes tell the evaluator how a robustness set is scored (both None for any other dataset):

    - ``label_sets``: ``label_sets[i]``, the ImageNet indices counted correct for sample ``i`` (ImageNet ReaL: sorted,
      possibly empty). A sample is correct at k when one of its k best predictions is in its set; a sample with an
      empty set is left out of the metrics, as the ReaL paper does. ``samples[i][1]`` stays the original label.
    - ``class_subset``: the sorted ImageNet indices the predictions are restricted to (ImageNet-R/-A: those of the
      class folders present, the publisher's whole 200 when all are there): top-k over those logits only, as the
      sets' authors evaluate. Labels stay ImageNet indices, each one of ``class_subset``.
    """

    samples: list[tuple[str, int]]
    classes: Sequence[str]
    root: str
    layout: str
    source: str
    transform: Callable[[str], Any] | None = None
    label_sets: list[tuple[int, ...]] | None = None
    class_subset: tuple[int, ...] | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return (self.transform(path) if self.transform is not None else load_image(path)), label

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        text = f"{len(self)} images, {self.num_classes} classes, {self.source} ({self.layout})"
        if self.label_sets is not None:
            empty = sum(not s for s in self.label_sets)
            text += (f"; correct when a prediction is in the image's ReaL label set, {empty} image(s) without one "
                     f"left out")
        if self.class_subset is not None:
            text += f"; top-k over its {len(self.class_subset)} classes only"
        return f"{self.name}: {text}" if self.name else text

    def select(self, indices: Sequence[int]) -> "ImageDataset":
        """The samples at ``indices``, in that order, with their label sets."""
        sets = self.label_sets
        return replace(self, samples=[self.samples[i] for i in indices],
                       label_sets=None if sets is None else [sets[i] for i in indices])


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _entries(folder: str | os.PathLike) -> list[tuple[os.DirEntry, bool]]:
    """``(entry, is a folder)`` of each entry of ``folder``, through links; a link loop or dangling link is not a
    folder. An unreadable folder is an error: skipping it would drop its images from the metrics unseen."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        raise DatasetError(f"cannot list folder {os.fsdecode(folder)!r}: {e.strerror or e}") from None
    out = []
    for e in entries:
        try:
            out.append((e, e.is_dir()))
        except OSError:  # ELOOP and the like (os.walk treats them so too)
            out.append((e, False))
    return out


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e, is_dir in _entries(folder) if is_dir and not e.name.startswith("."))


def _flat_images(folder: Path, regular_only: bool = True) -> list[str]:
    """Image names directly in ``folder``: regular files (to detect the layout), or every entry that is not a folder
    (to label them: a FIFO or dangling link among them is then named when read, not silently left out)."""
    return sorted(e.name for e, is_dir in _entries(folder) if not is_dir and is_image_file(e.name)
                  and (not regular_only or e.is_file()))


def image_files(top: Path, seen: set[tuple[int, int]]) -> list[str]:
    """The image files under ``top``, recursively (mmpretrain's ``get_samples``: ``os.walk(followlinks=True)``), as
    sorted path strings; a folder (``(st_dev, st_ino)``) in ``seen`` is skipped with a warning, and each listed one is
    added, so a link loop ends and no image is counted twice."""
    files, stack = [], [os.fspath(top)]
    while stack:
        folder = stack.pop()
        for e, is_dir in _entries(folder):
            if not is_dir:
                if is_image_file(e.name):
                    files.append(e.path)
                continue
            st = e.stat()
            if (st.st_dev, st.st_ino) in seen:
                log.warning("%s leads to a folder listed already (%s): not listed again, so that no image counts "
                            "twice", e.path, os.path.realpath(e.path))
                continue
            seen.add((st.st_dev, st.st_ino))
            stack.append(e.path)
    return sorted(files)


def read_lines(path: Path, what: str = "label file") -> list[str]:
    """The lines of a text file, as people write them: UTF-8 with or without a byte-order mark (Windows Notepad
    writes one, and it used to glue itself to the first line), UTF-16 with one; LF, CRLF or CR line ends. ``what``
    names the file in errors (:class:`DatasetError`)."""
    try:
        with open_regular_file(path, what, DatasetError) as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        raise DatasetError(f"{what} {str(path)!r} is not UTF-8 (or UTF-16) text: save it as UTF-8") from None
    # str.splitlines() would also split at \x1c-\x1e, \x85, \u2028 ..., characters a file name may hold
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_annotation_file(path: Path, image_dir: Path, num_classes: int | None,
                         flat_images: list[str] | None = None) -> tuple[list[tuple[str, int]], str]:
    """Read any supported label file: ``(samples, format name)``. ``path label`` / ``path synset`` lines give the
    samples (paths relative to ``image_dir``); the flat validation folder's formats label the images in ``image_dir``
    by their number (``flat_images``: their sorted names, when the caller has listed them already).

    Raises:
        DatasetError: naming the file and line of a malformed line, an unknown synset, or a label outside
            ``0..num_classes-1`` (negative only, when None); or an image that the file does not label.
    """
    lines = read_lines(path)
    content = [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip()]
    if not content:
        raise DatasetError(f"label file {str(path)!r} is empty")
    first = content[0][1]
    synset_index = {s: i for i, s in enumerate(imagenet_synsets())}

    def synset_label(s: str, lineno: int) -> int:
        if s not in synset_index:
            raise DatasetError(f"{str(path)!r} line {lineno}: {s!r} is not an ImageNet-1k synset")
        return synset_index[s]

    if first.replace(" ", "").lower().startswith("imageid,predictionstring"):  # Kaggle LOC_val_solution.csv
        by_number, line_of = {}, {}
        for lineno, row in enumerate(csv.reader(lines), 1):
            if lineno == 1 or not row or not "".join(row).strip():
                continue
            m = _VAL_NUMBER.search(row[0]) if len(row) == 2 else None
            if not m or not row[1].split():
                raise DatasetError(f"{str(path)!r} line {lineno}: expected 'ILSVRC2012_val_NNNNNNNN,nXXXXXXXX ...'")
            number = int(m.group(1))
            if number in line_of:
                raise DatasetError(f"{str(path)!r} lines {line_of[number]} and {lineno} both label {row[0].strip()!r}: "
                                   "each image must be listed once (it would count twice); remove one")
            line_of[number] = lineno
            by_number[number] = synset_label(row[1].split()[0], lineno)
        return _label_flat_folder(image_dir, by_number, path, flat_images), "Kaggle LOC_val_solution.csv"
    if re.fullmatch(r"[0-9]+", first):  # devkit ILSVRC2012_validation_ground_truth.txt
        id_synsets, by_number = ilsvrc2012_id_synsets(), {}
        for number, (lineno, text) in enumerate(content, 1):
            if not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= len(id_synsets):
                raise DatasetError(f"{str(path)!r} line {lineno}: expected an ILSVRC2012_ID between 1 and 1000, "
                                   f"got {text!r}")
            by_number[number] = synset_index[id_synsets[int(text) - 1]]
        return _label_flat_folder(image_dir, by_number, path, flat_images), "devkit ground truth (ILSVRC2012_IDs)"
    if _SYNSET.fullmatch(first):  # one synset per line, image i on line i
        by_number = {number: synset_label(text, lineno) for number, (lineno, text) in enumerate(content, 1)}
        return _label_flat_folder(image_dir, by_number, path, flat_images), "one synset per image"
    samples, line_of = [], {}
    for lineno, text in content:
        m = re.fullmatch(r"(.*?)\s+(\S+)", text)  # the label after the last run of spaces or tabs
        if not m:
            raise DatasetError(f"{str(path)!r} line {lineno}: expected 'relative/path label', got {text!r}")
        rel, label = m.groups()
        key = os.path.normpath(rel)  # a/b.jpg, ./a/b.jpg and a//b.jpg are one file
        if key in line_of:
            raise DatasetError(f"{str(path)!r} lines {line_of[key]} and {lineno} both list {rel!r}: each image must "
                               "be listed once (it would count twice in the metrics); remove one")
        line_of[key] = lineno
        if re.fullmatch(r"-?[0-9]+", label):
            value = int(label)
            if value < 0 or (num_classes is not None and value >= num_classes):
                known = f"0..{num_classes - 1} ({num_classes} classes)" if num_classes is not None else "0 or more"
                raise DatasetError(f"{str(path)!r} line {lineno}: label {value} is outside the class range {known}")
        elif _SYNSET.fullmatch(label):
            value = synset_label(label, lineno)
        else:
            raise DatasetError(f"{str(path)!r} line {lineno}: label {label!r} is neither an integer nor a synset")
        samples.append((str(image_dir / rel), value))
    return samples, "annotation file (path label)"


def _label_flat_folder(image_dir: Path, by_number: dict[int, int], label_file: Path,
                       names: list[str] | None = None) -> list[tuple[str, int]]:
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {str(image_dir)!r} (labelled by {str(label_file)!r}) does not exist")
    samples, name_of = [], {}
    for name in names if names is not None else _flat_images(image_dir, regular_only=False):
        m = _VAL_NUMBER.search(name)
        if not m or int(m.group(1)) not in by_number:
            raise DatasetError(f"{str(image_dir / name)!r} has no label in {str(label_file)!r} (it labels "
                               f"ILSVRC2012_val_00000001 to _{max(by_number):08d} by the number in the file name)")
        number = int(m.group(1))
        if number in name_of:
            raise DatasetError(f"{str(image_dir / name_of[number])!r} and {name!r} are both image {number} of "
                               f"{str(label_file)!r}: it would count twice; keep one")
        name_of[number] = name
        samples.append((str(image_dir / name), by_number[number]))
    if not samples:
        raise DatasetError(f"{str(image_dir)!r} holds no images ({', '.join(IMG_EXTENSIONS)})")
    if len(samples) != len(by_number):
        log.warning("%s labels %d images; %s holds %d of them", label_file, len(by_number), image_dir, len(samples))
    return samples


def _folder_samples(image_dir: Path, folders: Sequence[str], class_index: dict[str, int], expected: str
                    ) -> list[tuple[str, int]]:
    """Label every image under ``image_dir/<folder>`` by ``class_index[folder]`` (``expected``: what a folder is)."""
    unknown = [f for f in folders if f not in class_index]
    if unknown:
        raise DatasetError(f"{str(image_dir / unknown[0])!r} is not {expected} ({len(unknown)} folder(s) are not: "
                           f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''})")
    # Every class folder (and their parent) counts as listed from the start: a link from one class into another
    # would give the other's images a second, wrong label.
    seen: dict[tuple[int, int], str] = {}
    for folder in (image_dir, *(image_dir / name for name in folders)):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            raise DatasetError(f"{str(folder)!r} and {seen[st.st_dev, st.st_ino]!r} are one folder (a symbolic "
                               "link?): its images would have two labels; remove one")
        seen[st.st_dev, st.st_ino] = str(folder)
    listed = set(seen)  # one set for all classes: a folder linked from two classes is listed under the first only
    samples = []
    for name in folders:
        files = image_files(image_dir / name, listed)
        if not files:
            log.warning("class folder %s holds no images", image_dir / name)
        samples += [(f, class_index[name]) for f in files]
    if not samples:
        raise DatasetError(f"the class folders of {str(image_dir)!r} hold no images ({', '.join(IMG_EXTENSIONS)})")
    return samples


def _resolve(root: Path, file: str | os.PathLike) -> Path:
    p = Path(file)
    return p if p.is_absolute() or p.exists() else root / p


def imagenet_dataset(root: str | os.PathLike = "data/imagenet", split: str = "val",
                     transform: Callable[[str], Any] | None = None, ann_file: str | os.PathLike | None = None,
                     data_prefix: str | None = None) -> ImageDataset:
    """ImageNet-1k from any layout in the module docstring, detected in that order.

    Args:
        root: the dataset folder (mmpretrain's ``data_root``).
        split: ``train``, ``val`` (or another folder name); images live in ``root/{data_prefix or split}``.
        transform: applied to each image path (e.g. ``EvalTransform(preset).to_uint8``).
        ann_file: a label file, relative to ``root`` unless it exists as given (default: ``root/meta/{split}.txt``).

    Raises:
        DatasetError: for a missing root, an undetectable layout (naming the root and every layout tried), a
            folder that is not a synset, or a bad label (naming the file and line).
    """
    root = Path(root)
    classes = imagenet_synsets()
    if not root.is_dir():
        raise DatasetError(f"ImageNet root {str(root)!r} does not exist (relative paths are from {os.getcwd()!r}). "
                           f"Expected {root}/{split}/<synset>/*.JPEG, {root}/meta/{split}.txt with {root}/{split}/..., "
                           f"or the flat official {root}/{split}/ILSVRC2012_val_*.JPEG with "
                           "ILSVRC2012_validation_ground_truth.txt; see the README section 'Evaluate on ImageNet'")
    image_dir = root / (data_prefix or split)
    ann = _resolve(root, ann_file) if ann_file else root / "meta" / f"{split}.txt"
    if ann_file or os.path.lexists(ann):  # something at meta/{split}.txt: a FIFO or dangling link is an error
        check_regular_file(ann, "annotation file", DatasetError)
    names = list(imagenet_classes())
    if ann.is_file():
        samples, fmt = read_annotation_file(ann, image_dir, len(classes))
        return ImageDataset(samples, names, str(root), fmt, str(ann), transform)
    exists = image_dir.is_dir()
    folders, flat = (_subfolders(image_dir), _flat_images(image_dir)) if exists else ([], [])
    if folders and not flat:
        expected = ("an ImageNet-1k class folder: class folders must be WordNet ids such as n01440764 (for your "
                    "own classes use dataset type='CustomDataset')")
        samples = _folder_samples(image_dir, folders, {s: i for i, s in enumerate(classes)}, expected)
        return ImageDataset(samples, names, str(root), "folder per class", str(image_dir), transform)
    if flat:
        dirs = (root, image_dir, root / "ILSVRC2012_devkit_t12" / "data")
        for c in (d / f for f in VAL_LABEL_FILES for d in dirs):
            if os.path.lexists(c):
                check_regular_file(c, "label file", DatasetError)
                samples, fmt = read_annotation_file(c, image_dir, len(classes),
                                                    _flat_images(image_dir, regular_only=False))
                return ImageDataset(samples, names, str(root), f"flat folder + {fmt}", str(image_dir), transform)
        raise DatasetError(f"{str(image_dir)!r} holds {len(flat)} images directly (the official flat validation "
                           f"folder?) but no labels were found: put ILSVRC2012_validation_ground_truth.txt (from the "
                           f"ILSVRC2012 devkit), LOC_val_solution.csv (Kaggle) or "
                           f"imagenet_2012_validation_synset_labels.txt in {str(root)!r}, or give ann_file= (config: "
                           f"test_dataloader.dataset.ann_file)")
    found = ("holds neither class folders nor images" if exists
             else "no such folder (class folders or flat validation images)")
    raise DatasetError(f"no ImageNet layout found under {str(root)!r}. Tried:\n  - annotation file {ann}: not found\n"
                       f"  - {image_dir}: {found}")


def read_real_labels(path: str | os.PathLike) -> list[tuple[int, ...]]:
    """ReaL's ``real.json`` (google-research/reassessed-imagenet): a JSON list of 50,000 lists of ImageNet indices,
    entry ``i`` for ``ILSVRC2012_val_{i+1:08d}``; each returned sorted, duplicates dropped (some are empty).

    Raises:
        DatasetError: naming the file, for anything else (not JSON, another length, an entry that is not a list of
            indices 0..999), or a file far larger than real.json.
    """
    path = Path(path)
    fix = (f"use ReaL's own {REAL_JSON} (https://github.com/google-research/reassessed-imagenet), "
           f"{REAL_IMAGES} lists of ImageNet indices")
    try:
        with open_regular_file(path, "ReaL label file", DatasetError) as f:
            raw = f.read(REAL_JSON_MAX_BYTES + 1)
    except OSError as e:
        raise DatasetError(f"cannot read ReaL label file {str(path)!r}: {e.strerror or e}") from None
    if len(raw) > REAL_JSON_MAX_BYTES:
        raise DatasetError(f"ReaL label file {str(path)!r} is over {REAL_JSON_MAX_BYTES:,} bytes ({REAL_JSON} is "
                           f"0.4 MB), so it is not ReaL's labels; {fix}")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"ReaL label file {str(path)!r} is not JSON ({e}); {fix}") from None
    if not isinstance(data, list) or len(data) != REAL_IMAGES:
        what = f"a list of {len(data)}" if isinstance(data, list) else f"a JSON {type(data).__name__}"
        raise DatasetError(f"ReaL label file {str(path)!r} holds {what}, not one entry per ILSVRC2012 val image "
                           f"({REAL_IMAGES}); {fix}")
    sets = []
    for i, entry in enumerate(data):
        if not isinstance(entry, list) or not all(_is_index(y) for y in entry):
            raise DatasetError(f"ReaL label file {str(path)!r} entry {i} (ILSVRC2012_val_{i + 1:08d}) is "
                               f"{json.dumps(entry)[:60]}, not a list of ImageNet indices 0..999; {fix}")
        sets.append(tuple(sorted(set(entry))))
    return sets


def _is_index(y: Any) -> bool:
    return isinstance(y, int) and not isinstance(y, bool) and 0 <= y < 1000


def real_dataset(root: str | os.PathLike = "data/imagenet", split: str = "val",
                 transform: Callable[[str], Any] | None = None, ann_file: str | os.PathLike | None = None,
                 data_prefix: str | None = None) -> ImageDataset:
    """ImageNet ReaL: the ILSVRC2012 val images as :func:`imagenet_dataset` finds them (any of its layouts; their
    own labels stay the samples' labels), with ``label_sets`` from ReaL's ``real.json``: ``ann_file`` (relative to
    ``root`` unless it exists as given), else ``real.json`` beside the images (``root/{data_prefix or split}``) or
    in ``root``. Images are matched by the number in their official names, so a subset works.

    Raises:
        DatasetError: as :func:`imagenet_dataset`; for a missing or malformed ``real.json``
            (:func:`read_real_labels`); for an image not named ``ILSVRC2012_val_NNNNNNNN.*`` (1..50000), or two
            files of one number.
    """
    base = imagenet_dataset(root, split, transform, None, data_prefix)
    root = Path(root)
    image_dir = root / (data_prefix or split)
    tried = [_resolve(root, ann_file)] if ann_file else [image_dir / REAL_JSON, root / REAL_JSON]
    found = next((c for c in tried if os.path.lexists(c)), None)
    if found is None:
        raise DatasetError(f"no ReaL labels: {' or '.join(repr(str(c)) for c in tried)} does not exist. Download "
                           f"{REAL_JSON} from https://github.com/google-research/reassessed-imagenet into "
                           f"{str(image_dir)!r} (beside the val images), or give its path as ann_file= (config: "
                           "test_dataloader.dataset.ann_file)")
    sets = read_real_labels(found)
    label_sets: list[tuple[int, ...]] = []
    path_of: dict[int, str] = {}
    for path, _ in base.samples:
        m = _VAL_NUMBER.search(os.path.basename(path))
        number = int(m.group(1)) if m else 0
        if not 1 <= number <= REAL_IMAGES:
            raise DatasetError(f"{path!r} is not an ILSVRC2012 val image name (ILSVRC2012_val_00000001 .. "
                               f"_{REAL_IMAGES:08d}): {str(found)!r} labels the images by that number; keep the "
                               "official file names")
        if number in path_of:
            raise DatasetError(f"{path_of[number]!r} and {path!r} are both ILSVRC2012 val image {number}: it would "
                               "count twice; keep one")
        path_of[number] = path
        label_sets.append(sets[number - 1])
    return replace(base, label_sets=label_sets, name=ROBUSTNESS_SETS["ImageNetReaL"],
                   layout=f"{base.layout} + ReaL label sets", source=f"{base.source} + {found}")


# The WordNet ids of the two 200-class sets, in ImageNet index order. ImageNetV2's tarballs unpack to
# <variant>-format-val/<0..999>/<hash>.jpeg; ImageNet-R's to imagenet-r/<wnid>/*.jpg, -A's to imagenet-a/<wnid>/*.jpg
# (each 200 wnids, a different 200); ImageNet-Sketch's to sketch/<wnid>/*.JPEG (all 1000).
_SUBSET_TABLES = {"ImageNetR": "imagenet_r_synsets.txt", "ImageNetA": "imagenet_a_synsets.txt"}


def _class_folders(kind: str) -> tuple[dict[str, int], str]:
    """``(folder name -> ImageNet index, what a folder must be)`` of a class-folder set."""
    index = {s: i for i, s in enumerate(imagenet_synsets())}
    if kind == "ImageNetV2":
        return {str(i): i for i in range(1000)}, ("an ImageNetV2 class folder: its folders are named by ImageNet "
                                                  "class index, 0 to 999, as its tarballs unpack")
    if kind in _SUBSET_TABLES:
        other = next(k for k in _SUBSET_TABLES if k != kind)
        return {s: index[s] for s in _read(_SUBSET_TABLES[kind])}, (
            f"one of {ROBUSTNESS_SETS[kind]}'s 200 class folders (the WordNet ids of cspnet/data/"
            f"{_SUBSET_TABLES[kind]}; {ROBUSTNESS_SETS[other]} has another 200: type='{other}')")
    return index, "an ImageNet-1k class folder (a WordNet id such as n01440764)"


def class_folder_dataset(kind: str, root: str | os.PathLike, data_prefix: str | None = None,
                         transform: Callable[[str], Any] | None = None) -> ImageDataset:
    """ImageNetV2, ImageNet-R, ImageNet-A or ImageNet-Sketch (``kind``, a key of :data:`ROBUSTNESS_SETS`) as their
    publishers ship them: ``root/[data_prefix]/<class folder>/<images>``, labelled with ImageNet indices; R and A
    also get their ``class_subset`` (the sorted indices of the folders present).

    Raises:
        DatasetError: for a missing folder, images outside the class folders, a folder that is not one of the
            set's classes (a wnid not in ImageNet, not in R's or A's 200, a V2 folder ``1000``), or no images.
    """
    name = ROBUSTNESS_SETS[kind]
    image_dir = Path(root) / data_prefix if data_prefix else Path(root)
    class_index, expected = _class_folders(kind)
    where = (f"{name} is read as published: data_root (and data_prefix or split, a folder below it) is the folder "
             f"holding its class folders")
    if not image_dir.is_dir():
        raise DatasetError(f"{name} folder {str(image_dir)!r} does not exist (relative paths are from "
                           f"{os.getcwd()!r}); {where}; see the README section 'Robustness test sets'")
    folders, flat = _subfolders(image_dir), _flat_images(image_dir, regular_only=False)
    if flat or not folders:
        found = f"holds {len(flat)} image(s) directly ({flat[0]}, ...)" if flat else "holds no class folders"
        raise DatasetError(f"{str(image_dir)!r} {found}: {where}, each {expected}")
    samples = _folder_samples(image_dir, folders, class_index, expected)
    subset = None
    if kind in _SUBSET_TABLES:
        subset = tuple(sorted(class_index[f] for f in folders))
        if len(subset) < len(class_index):
            log.warning("%s holds %d of %s's %d class folders: top-k is over those %d classes, so the figures are "
                        "not comparable with the full set's", image_dir, len(subset), name, len(class_index),
                        len(subset))
    return ImageDataset(samples, list(imagenet_classes()), str(root), f"{name}, folder per class", str(image_dir),
                        transform, class_subset=subset, name=name)


def _read_classes(classes: Sequence[str] | str | os.PathLike, root: Path) -> list[str]:
    if isinstance(classes, (str, os.PathLike)):
        path = _resolve(root, classes)
        check_regular_file(path, "classes file", DatasetError)
        names = [line.strip() for line in read_lines(path) if line.strip()]
    else:
        names = [str(c) for c in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DatasetError("class names must be unique; duplicates: " + ", ".join(duplicates))
    if not names:
        raise DatasetError("the class list is empty")
    return names


def custom_dataset(root: str | os.PathLike, data_prefix: str | None = None, ann_file: str | os.PathLike | None = None,
                   classes: Sequence[str] | str | os.PathLike | None = None,
                   transform: Callable[[str], Any] | None = None) -> ImageDataset:
    """Your own classes: folder per class under ``root/[data_prefix]``, or an annotation file (``path label``).

    Args:
        classes: class names in label order, or a text file of them (one per line); default: the sorted folder
            names (folder layout) or ``0..max label`` (annotation file).

    Raises:
        DatasetError: for a missing folder, a folder not among ``classes``, no images, or a bad label line.
    """
    root = Path(root)
    image_dir = root / data_prefix if data_prefix else root
    names = _read_classes(classes, root) if classes is not None else None
    if ann_file:
        ann = _resolve(root, ann_file)
        check_regular_file(ann, "annotation file", DatasetError)
        samples, fmt = read_annotation_file(ann, image_dir, len(names) if names is not None else None)
        if names is None:
            names = [str(i) for i in range(max(label for _, label in samples) + 1)]
        return ImageDataset(samples, names, str(root), fmt, str(ann), transform)
    if not image_dir.is_dir():
        raise DatasetError(f"dataset folder {str(image_dir)!r} does not exist (expected {image_dir}/<class>/<images>)")
    folders = _subfolders(image_dir)
    if not folders:
        raise DatasetError(f"{str(image_dir)!r} has no class folders (expected {image_dir}/<class>/<images>)")
    names = folders if names is None else names
    expected = f"one of the {len(names)} given classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
    samples = _folder_samples(image_dir, folders, {n: i for i, n in enumerate(names)}, expected)
    return ImageDataset(samples, names, str(root), "folder per class", str(image_dir), transform)


@dataclass(frozen=True)
class DataSpec:
    """A dataset on disk, as a config's ``dataset=dict(...)`` describes it (:func:`cspnet.config.data_spec`):
    ``kind`` 'ImageNet' (:func:`imagenet_dataset`), 'CustomDataset' (:func:`custom_dataset`), 'ImageNetReaL'
    (:func:`real_dataset`; ``ann_file``: its ``real.json``) or 'ImageNetV2', 'ImageNetR', 'ImageNetA',
    'ImageNetSketch' (:func:`class_folder_dataset`, the class folders in ``root/[data_prefix or split]``), and
    their arguments; ``indices`` (mmengine's): the first N samples, or those indices."""

    kind: str = "ImageNet"
    root: str = "data/imagenet"
    split: str | None = "val"
    ann_file: str | None = None
    data_prefix: str | None = None
    classes: tuple[str, ...] | str | None = None
    indices: int | tuple[int, ...] | None = None

    def class_names(self) -> list[str]:
        """The class names in label order, without listing the images (a folder per class: the folder names),
        so a run can size its head before any weights load; what :meth:`build` would give."""
        if self.kind == "CustomDataset" and not self.ann_file:
            root = Path(self.root)
            if self.classes is not None:
                return _read_classes(self.classes, root)
            image_dir = root / (self.data_prefix or self.split) if self.data_prefix or self.split else root
            if image_dir.is_dir() and _subfolders(image_dir):
                return _subfolders(image_dir)
        if self.kind in IMAGENET_KINDS:
            return list(imagenet_classes())
        return list(self.build().classes)  # an annotation file (or a folder that build() explains is wrong)

    def build(self, transform: Callable[[str], Any] | None = None) -> ImageDataset:
        if self.kind in IMAGENET_KINDS and self.classes is not None:
            raise DatasetError(f"type={self.kind!r} has the 1000 ImageNet classes; for your own use "
                               "type='CustomDataset'")
        if self.kind == "ImageNet":
            ds = imagenet_dataset(self.root, self.split or "val", transform, self.ann_file, self.data_prefix)
        elif self.kind == "ImageNetReaL":
            ds = real_dataset(self.root, self.split or "val", transform, self.ann_file, self.data_prefix)
        elif self.kind in ROBUSTNESS_SETS:
            if self.ann_file:  # accepted by the schema for the other types; here it would be silently unused
                raise DatasetError(f"type={self.kind!r} reads its class folders as published and takes no ann_file "
                                   f"({self.ann_file!r}): remove it, or use type='ImageNet' for an annotation file")
            ds = class_folder_dataset(self.kind, self.root, self.data_prefix or self.split, transform)
        elif self.kind == "CustomDataset":
            ds = custom_dataset(self.root, self.data_prefix or self.split, self.ann_file, self.classes, transform)
        else:
            raise DatasetError(f"dataset type {self.kind!r} is not supported; use one of "
                               f"{', '.join(map(repr, IMAGENET_KINDS))} or 'CustomDataset'")
        if self.indices is None:
            return ds
        picked = range(min(self.indices, len(ds))) if isinstance(self.indices, int) else self.indices
        if any(not isinstance(i, int) or not 0 <= i < len(ds) for i in picked):
            raise DatasetError(f"indices={self.indices!r:.80}: {ds.source} holds {len(ds)} images (0..{len(ds) - 1})")
        return ds.select(picked)
