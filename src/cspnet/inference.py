"""``inference_model``: classify one image or many, as mmpretrain's ``inference_model`` does."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .data.transforms import EvalTransform, ImageLike
from .fast import optimize_for_inference
from .models.classifier import ImageClassifier
from .zoo import get_model, get_weights_info


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def inference_model(
    model: ImageClassifier | str,
    images: ImageLike | Sequence[ImageLike],
    device: str | torch.device | None = None,
    batch_size: int = 16,
    topk: int | None = None,
    optimize: bool = True,
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
            itself is not changed.

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
    net = optimize_for_inference(model) if optimize else model
    results = []
    for start in range(0, len(items), batch_size):
        batch = torch.stack([transform.to_uint8(im) for im in items[start : start + batch_size]])
        scores = net(transform.normalize(batch.to(dev))).float().softmax(dim=1).cpu()
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
