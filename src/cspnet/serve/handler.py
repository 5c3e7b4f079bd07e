"""What a server does with one model, whoever batches for it (:class:`~cspnet.serve.batcher.Batcher` in
``cspnet serve``, ``@serve.batch`` in Ray Serve): an upload's bytes -> the uint8 crop, a batch of crops -> softmax
scores, one image's scores -> its JSON answer. The server's limits: :mod:`.limits`."""

from __future__ import annotations

from typing import Any

import torch

from .. import zoo
from ..data.transforms import decode_image
from ..inference import _fast_copy, _result
from ..optimize import model_device
from .limits import Limits
from .metrics import Metrics


class ModelHandler:
    """One model, in eval mode, served: :meth:`preprocess` (bytes -> ``(3, crop, crop)`` uint8, for a thread pool:
    Pillow releases the GIL), :meth:`predict_batch` (``(N, 3, crop, crop)`` uint8 -> ``(N, num_classes)`` float32
    softmax, on the model's fast copy, one call at a time), :meth:`answer` (scores -> JSON). ``metrics`` counts
    what goes through it. ``dtype``: the fast copy's numerics (:func:`cspnet.inference_model`'s)."""

    def __init__(self, model: torch.nn.Module, limits: Limits = Limits(), dtype: str | None = None):
        self.model = model.eval()
        self.limits = limits
        self.name = getattr(model, "name", None) or type(model).__name__
        self.transform = model.transform or zoo.get_transform(model.backbone.arch.name)
        self.classes = model.classes
        self.device = model_device(model)
        # inference_model's folded copy, made once here, in the loading thread
        self.net = _fast_copy(model, dtype)
        self.metrics = Metrics(limits.max_batch_size)
        self.warm = False

    @property
    def num_classes(self) -> int:
        return self.net.num_classes or len(self.classes or ())

    def preprocess(self, data: bytes, name: str) -> torch.Tensor:
        """An encoded image -> its uint8 RGB crop ``(3, crop, crop)``; :class:`~cspnet.errors.ImageError` naming
        ``name`` for anything that is not a readable image within ``limits.max_pixels``."""
        # max_pixels always given: decode_image's Pillow-warning-as-error is process-global state, which threads
        # decoding at once may undo for one another; the explicit check before decoding is not.
        return self.transform.to_uint8(decode_image(data, name, self.limits.max_pixels))

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 3, crop, crop)`` -> softmax scores ``(N, num_classes)`` float32 on the CPU."""
        self.metrics.batch_size.observe(len(batch))
        x = self.transform.normalize(batch.to(self.device, non_blocking=True))
        return self.net(x).float().softmax(dim=1).cpu()

    def warm_up(self) -> None:
        """Forward passes at batch 1 and ``max_batch_size`` (oneDNN and cuDNN set up per shape), then ``warm``."""
        crop = self.transform.preset.crop
        with torch.inference_mode():
            for n in sorted({1, self.limits.max_batch_size}):
                x = self.transform.normalize(torch.zeros(n, 3, crop, crop, dtype=torch.uint8, device=self.device))
                self.net(x)
        self.warm = True

    def answer(self, scores: torch.Tensor, image: str, topk: int) -> dict[str, Any]:
        """One image's scores ``(num_classes,)`` -> ``{image, pred_label, pred_score, pred_class, topk: [{label,
        score, class}]}``, from :func:`cspnet.inference_model`'s result."""
        res = _result(scores, self.classes, topk)
        return {"image": image, "pred_label": res["pred_label"], "pred_score": res["pred_score"],
                "pred_class": res.get("pred_class"),
                "topk": [{"label": label, "score": score, "class": name} for label, score, name in res["topk"]]}
