"""``inference_model``: classify one image or many, as mmpretrain's ``inference_model`` does."""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data.resample import split_transform
from .data.transforms import EvalTransform, ImageLike
from .errors import ImageError, InvalidOptionError
from .fast import optimize_for_inference
from .models.classifier import ImageClassifier
from .zoo import get_model, get_weights_info


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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
def inference_model(
    model: ImageClassifier | str,
    images: ImageLike | Sequence[ImageLike],
    device: str | torch.device | None = None,
    batch_size: int = 16,
    topk: int | None = None,
    optimize: bool = True,
    num_workers: int | None = None,
    resize: str = "auto",
    **get_model_kwargs,
) -> dict[str, Any] | list[dict[str, Any]]:
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
    transform = model.transform or EvalTransform(get_weights_info(model.backbone.arch.name).eval)
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    dev = _model_device(model)
    net = _fast_copy(model) if optimize else model
    read, on_device = split_transform(transform, dev, resize)
    results = []
    for _, batch, _, bad in _batches(items, read, batch_size, num_workers, pin=dev.type == "cuda"):
        if bad:  # the first unreadable image, named by its ImageError
            raise ImageError(bad[0][1])
        batch = on_device(batch) if on_device else batch.to(dev, non_blocking=True)
        scores = net(transform.normalize(batch)).float().softmax(dim=1).cpu()
        for row in scores:
            label = int(row.argmax())
            res = {"pred_label": label, "pred_score": float(row[label]), "pred_scores": row.numpy().astype(np.float32)}
            if model.classes is not None:
                res["pred_class"] = model.classes[label]
            if topk:
                vals, idx = row.topk(min(topk, row.numel()))
                res["topk"] = [
                    (int(i), float(v), model.classes[int(i)] if model.classes is not None else None)
                    for v, i in zip(vals, idx)
                ]
            results.append(res)
    return results[0] if single else results


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: list, read: Callable[[ImageLike], Any]):
        self.items, self.read = items, read

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.read(self.items[i]), -1


def _batches(items: list, read: Callable[[ImageLike], Any], batch_size: int, num_workers: int | None, pin: bool):
    """``(indices, images, labels, bad)`` per batch of ``read``'s outputs, in order (the evaluation loader's)."""
    from .engine.evaluate import build_eval_loader

    if batch_size < 1:
        raise InvalidOptionError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers is None:
        batches = -(-len(items) // batch_size)
        num_workers = min(os.cpu_count() or 1, batches) if batches > 1 else 0
    elif num_workers < 0:
        raise InvalidOptionError(f"num_workers must be 0 or more, got {num_workers}")
    return build_eval_loader(_Images(items, read), batch_size, num_workers, rank=0, world_size=1, pin_memory=pin)
