"""The user's front door, as mmpretrain's ``apis``: :func:`get_model` (a model from a name, a config file or a
checkpoint file) and :func:`inference_model` (classify one image or many)."""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import config, zoo
from .data.loader import ImageList, build_eval_loader, input_path
from .data.transforms import ImageLike
from .errors import ImageError, InvalidOptionError
from .models import CSPNet, ImageClassifier
from .optimize import optimize_for_inference
from .spec import ModelSpec

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def get_model(model: str | os.PathLike | ModelSpec, pretrained: Any = False, *args, **kwargs
              ) -> ImageClassifier | CSPNet:
    """A model, optionally with weights, in eval mode: :func:`cspnet.zoo.get_model` (its arguments and options),
    where ``model`` may also be a config file (``configs/cspnet/cspdarknet50_8xb32_in1k.py``: its model;
    ``pretrained=True`` then uses its ``load_from``, as mmpretrain's ``get_model``) or a checkpoint file (``.pth``,
    ``.safetensors``, ...), which carries its model and its weights: ``get_model('work_dirs/run/best.pth')``.
    """
    path = str(model) if isinstance(model, (str, os.PathLike)) else ""
    if path.endswith(".py"):
        cfg = config.load_config(path)
        if pretrained is True:
            pretrained = config.load_from(cfg) or True
        if config.head_width(cfg) is None and pretrained not in (False, True, None):
            # the config leaves the head to the data: a checkpoint brings its own (and its class names), so no
            # dataset need be at hand; its architecture must still be the config's
            return zoo.get_model(config.model_spec(cfg, classes_from=None).arch, pretrained, *args, **kwargs)
        return zoo.get_model(config.model_spec(cfg), pretrained, *args, **kwargs)
    if Path(path).suffix.lower() in CHECKPOINT_SUFFIXES:
        if pretrained not in (False, True):
            raise InvalidOptionError(f"get_model({path!r}, pretrained={pretrained!r}): a checkpoint given as the "
                                     f"model brings its weights; give the file once")
        return zoo.get_model(None, path, *args, **kwargs)
    return zoo.get_model(model, pretrained, *args, **kwargs)


# model -> (its tensors and their versions, its fast copy). Folding takes ~0.1 s, as long as a CPU forward pass at
# batch 1: made on every call it doubled the time of a loop classifying one image per call.
_FAST_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[list, torch.nn.Module]]" = weakref.WeakKeyDictionary()


def _fast_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``optimize_for_inference(model)``, cached until any parameter or buffer of ``model`` is replaced, moved, cast
    or changed in place (``load_state_dict``, an optimiser step, ``.to()``, ``p.data = ...``)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_inference() for t in tensors):  # made under inference_mode: no version counter to watch
        return optimize_for_inference(model)
    # The storage too: .to(dtype) and `p.data = ...` swap it without a version bump
    state = [(t._version, t.data_ptr(), t.device, t.dtype) for t in tensors]
    cached = _FAST_COPIES.get(model)
    # Weak references, not ids: a replaced tensor's id may be reused by its successor.
    if cached is not None and len(cached[0]) == len(tensors) and all(
            ref() is t and old == new for (ref, old), t, new in zip(cached[0], tensors, state)):
        return cached[1]
    net = optimize_for_inference(model)
    _FAST_COPIES[model] = ([(weakref.ref(t), s) for t, s in zip(tensors, state)], net)
    return net


@torch.inference_mode()
def inference_model(model: ImageClassifier | str, images: ImageLike | Sequence[ImageLike],
                    device: str | torch.device | None = None, batch_size: int = 16, topk: int | None = None,
                    optimize: bool = True, num_workers: int | None = None, resize: str = "auto",
                    progress: bool | None = False, **get_model_kwargs) -> dict[str, Any] | list[dict[str, Any]]:
    """Classify images.

    Args:
        model: an :class:`~cspnet.models.ImageClassifier`, or a model name (then built with
            ``get_model(name, pretrained=True, **get_model_kwargs)``).
        images: one image or a list. An image is a file path (any format Pillow opens), a ``PIL.Image``, or a
            NumPy array ``(H, W, 3)`` in **RGB** order, uint8 (mmpretrain assumes BGR for arrays; this does not).
        device: where to run (default: the model's device).
        batch_size: images per forward pass.
        topk: also return the ``topk`` best ``(label, score, class)`` triples under ``"topk"``.
        optimize: run a fast inference copy of the model (BatchNorm folded into the convolutions, channels_last:
            :func:`cspnet.optimize_for_inference`), which gives the same scores up to float rounding. ``model``
            itself is not changed; the copy is kept with it and made again only when its weights change.
        num_workers: processes that decode and resize images while the model runs. Default: with more images than
            one batch, one per CPU core (at most one per batch); else 0 (this process).
        resize: where the exact resize + centre crop runs: ``'loader'`` (with the decoding), ``'device'`` (on the
            model's device, :mod:`cspnet.data.resample`: the same pixels), ``'auto'`` (``'device'`` on CUDA).
        progress: a progress bar (images, img/s, ETA) on stderr: True, False, or None for only when stderr is a
            terminal (tqdm's ``disable=None``).

    Returns:
        For one image a dict, for a list a list of dicts, each with ``pred_label`` (int), ``pred_score`` (float,
        softmax probability), ``pred_scores`` (float32 array ``(num_classes,)``) and ``pred_class`` (str, when the
        model knows its class names).
    """
    if isinstance(model, str):
        get_model_kwargs.setdefault("pretrained", True)
        model = get_model(model, device=device, **get_model_kwargs)
    elif device is not None:
        model = model.to(device)
    model.eval()
    transform = model.transform or zoo.get_transform(model.backbone.arch.name)
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    dev = next(model.parameters()).device
    net = _fast_copy(model) if optimize else model
    inp = input_path(transform.preset, dev, resize)
    if num_workers is None:  # workers pay off from the second batch on
        batches = -(-len(items) // max(batch_size, 1))
        num_workers = min(os.cpu_count() or 1, batches) if batches > 1 else 0
    loader = build_eval_loader(ImageList(items, inp.read), batch_size, num_workers, pin_memory=dev.type == "cuda")
    results = []
    with tqdm(total=len(items), unit="img", desc="predict", disable=None if progress is None else not progress,
              dynamic_ncols=True, leave=False) as bar:
        for _, batch, _, bad in loader:
            if bad:  # the first unreadable image, named by its ImageError
                raise ImageError(bad[0][1])
            batch = inp.on_device(batch) if inp.on_device else batch.to(dev, non_blocking=True)
            scores = net(transform.normalize(batch)).float().softmax(dim=1).cpu()
            bar.update(len(scores))
            results += [_result(row, model.classes, topk) for row in scores]
    return results[0] if single else results


def _result(scores: torch.Tensor, classes: Sequence[str] | None, topk: int | None) -> dict[str, Any]:
    """One image's softmax scores ``(num_classes,)`` -> :func:`inference_model`'s dict."""
    label = int(scores.argmax())
    res = {"pred_label": label, "pred_score": float(scores[label]), "pred_scores": scores.numpy().astype(np.float32)}
    if classes is not None:
        res["pred_class"] = classes[label]
    if topk:
        vals, idx = scores.topk(min(topk, scores.numel()))
        res["topk"] = [(int(i), float(v), classes[int(i)] if classes is not None else None) for v, i in zip(vals, idx)]
    return res
