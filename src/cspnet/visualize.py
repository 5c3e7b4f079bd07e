"""Pictures: predictions drawn on images, and Grad-CAM heatmaps. Pillow only (no matplotlib, no grad-cam package).

Grad-CAM (Selvaraju et al., arXiv 1610.02391), as mmpretrain's ``vis_cam.py`` computes it through the ``grad-cam``
package: for a target layer with output ``A`` (N, C, h, w) and a target logit ``y``, the channel weights are the
spatial means of ``dy/dA``, the map is ``ReLU(sum_c w_c A_c)``, upsampled bilinearly to the input and scaled to 0..1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from ._io import atomic_write
from .data.transforms import ImageLike, load_image
from .errors import InvalidOptionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def save_image(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``img`` atomically; the format follows the suffix (``.png``, ``.jpg``, ...)."""
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise InvalidOptionError(f"{str(path)!r}: unknown image suffix {suffix!r}; use one of {list(IMAGE_SUFFIXES)}")
    return atomic_write(path, lambda tmp: img.save(tmp, format=fmt))  # tmp has no image suffix: name the format


def vis_paths(images: Sequence[str | os.PathLike], target: str | os.PathLike) -> list[Path]:
    """Where ``--save-vis TARGET`` puts the picture of each image. ``TARGET`` with an image suffix is one file, and then
    only one image is allowed; anything else is a folder (created) that receives ``<image stem>.png`` per image,
    ``<stem>-1.png``, ``<stem>-2.png``... when stems repeat."""
    target = Path(target)
    if target.suffix.lower() in IMAGE_SUFFIXES:
        if len(images) != 1:
            raise InvalidOptionError(f"--save-vis {str(target)!r} names one file but there are {len(images)} images; "
                                     f"give a folder")
        return [target]
    paths, seen = [], {}
    for image in images:
        stem = Path(image).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        paths.append(target / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png"))
    return paths


def draw_topk(image: ImageLike, topk: Sequence[tuple[int, float, str | None]]) -> Image.Image:
    """The image (RGB, original size) with its top-k ``(label, score, class name)`` written in its top-left corner."""
    img = load_image(image).copy()
    try:
        font = ImageFont.load_default(size=max(12, min(img.size) // 28))  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError, ImportError):
        font = ImageFont.load_default()
    lines = [f"{i}. {100 * score:.1f}%  {name if name is not None else f'class {label}'}"
             for i, (label, score, name) in enumerate(topk, 1)]
    draw = ImageDraw.Draw(img, "RGBA")
    pad = max(3, font.size // 3) if hasattr(font, "size") else 4
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    line_h = max(b[3] for b in boxes) + pad
    width = max(b[2] for b in boxes) + 2 * pad
    draw.rectangle((0, 0, width, line_h * len(lines) + pad), fill=(0, 0, 0, 160))  # legible on any background
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=(255, 255, 255, 255), font=font)
    return img


def save_predictions(images: Sequence[ImageLike], results: Sequence[dict], target: str | os.PathLike) -> list[Path]:
    """Draw each result's ``topk`` (from :func:`cspnet.inference_model`) on its image; save as :func:`vis_paths`."""
    paths = vis_paths([str(im) for im in images], target)
    for image, res, path in zip(images, results, paths):
        save_image(draw_topk(image, res["topk"]), path)
    return paths


def default_target_layer(model: nn.Module) -> str:
    """The last backbone stage (``backbone.stages.<n-1>``): the finest map that still sees the whole object."""
    stages = getattr(getattr(model, "backbone", None), "stages", None)
    if stages is None:
        raise InvalidOptionError(f"{type(model).__name__} has no backbone.stages; pass target_layer explicitly")
    return f"backbone.stages.{len(stages) - 1}"


def grad_cam(model: nn.Module, x: torch.Tensor, target_layer: str | None = None,
             target_class: int | Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM of ``model`` (any module mapping ``(N, 3, H, W)`` to logits ``(N, K)``) at ``target_layer``.

    Args:
        x: normalised input ``(N, 3, H, W)``.
        target_layer: a module path such as ``backbone.stages.4`` (default: the last stage).
        target_class: one class for every image, one per image, or None for each image's top class.

    Returns:
        ``(cam, classes, logits)``: ``cam`` float32 ``(N, H, W)`` in 0..1 (all zero when no location raises the
        logit), ``classes`` int64 ``(N,)`` the explained class of each image, ``logits`` ``(N, K)`` detached.
        The model is left in the mode it was in.
    """
    name = target_layer or default_target_layer(model)
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        stages = getattr(getattr(model, "backbone", None), "stages", ())
        hint = f" e.g. {[f'backbone.stages.{i}' for i in range(len(stages))]}" if len(stages) else ""
        raise InvalidOptionError(f"target layer {name!r} is not a module of {type(model).__name__};{hint}") from None

    captured = []

    def keep_output(_module, _inputs, output):
        captured.append(output)
        # hand the rest of the network a copy: a later in-place op (LeakyReLU(inplace=True)) then cannot
        # overwrite the tensor whose gradient we take
        return output.clone()

    handle = layer.register_forward_hook(keep_output)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # the input requires grad so that the layer output is in the graph even with frozen parameters
            logits = model(x.detach().requires_grad_(True))
            if not captured or not isinstance(captured[0], torch.Tensor) or captured[0].ndim != 4:
                raise InvalidOptionError(f"target layer {name!r} must output one (N, C, h, w) map")
            n, k = logits.shape
            if target_class is None:
                classes = logits.argmax(dim=1)
            else:
                classes = torch.as_tensor(target_class, dtype=torch.int64, device=logits.device).reshape(-1)
                if classes.numel() not in (1, n):
                    raise InvalidOptionError(f"target_class has {classes.numel()} entries for {n} images")
                classes = classes.expand(n)
                if classes.min() < 0 or classes.max() >= k:
                    raise InvalidOptionError(f"target class {target_class} is out of range: the model has {k} classes")
            score = logits.gather(1, classes[:, None]).sum()  # images are independent, so one backward serves all
            (grads,) = torch.autograd.grad(score, captured[0])
    finally:
        handle.remove()
        model.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * captured[0].detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - lo
    cam = torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.float(), classes.detach(), logits.detach()


def colormap(values: np.ndarray) -> np.ndarray:
    """0..1 floats ``(...)`` -> uint8 RGB ``(..., 3)`` on a jet-like scale (blue, cyan, yellow, red)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay_cam(image: Image.Image | np.ndarray | torch.Tensor, cam: torch.Tensor | np.ndarray,
                alpha: float = 0.5) -> Image.Image:
    """Blend a 0..1 heatmap ``(H, W)`` over an RGB image of that size: PIL, or uint8 ``(H, W, 3)`` / ``(3, H, W)``."""
    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).cpu().numpy() if image.ndim == 3 and image.shape[0] == 3 else image.numpy()
    rgb = np.asarray(load_image(image), dtype=np.float32)
    heat = colormap(cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else cam).astype(np.float32)
    if heat.shape != rgb.shape:
        raise InvalidOptionError(f"heatmap {heat.shape[:2]} and image {rgb.shape[:2]} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidOptionError(f"alpha={alpha} must be in [0, 1]")
    return Image.fromarray(((1.0 - alpha) * rgb + alpha * heat + 0.5).astype(np.uint8))
