"""Ray Serve: the app of ``cspnet serve`` (:func:`cspnet.serve.server.create_app`, the same handler and routes) as a
Ray Serve deployment, batched by ``@serve.batch`` and scaled out by Ray's replicas and autoscaling.

``serve run cspnet.serve:ray_app weights=work_dirs/run/best.pth num_replicas=2`` (Ray's application-builder
arguments: ``key=value``), ``serve run cspnet.serve:app`` (the published cspdarknet53), or from Python
``serve.run(cspnet.serve.ray_app({"model": "cspresnet50"}))``. Each replica loads the model itself: a weights file
must be at the same path on every node (or give a published name)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import torch
from ray import serve

from ..errors import InvalidOptionError
from .server import create_app
from .handler import ModelHandler
from .limits import Limits

# get_model's arguments (cspnet serve's model options, as `key=value`)
MODEL_KEYS = ("model", "weights", "device", "ema", "num_classes", "weights_dir", "mirror", "offline")
# serve.deployment's options
DEPLOYMENT_KEYS = ("name", "num_replicas", "autoscaling_config", "ray_actor_options", "max_ongoing_requests",
                   "max_queued_requests")


def load_model(args: Mapping[str, Any]) -> torch.nn.Module:
    """The model of ``args`` (:data:`MODEL_KEYS`), as ``cspnet serve`` loads it (``cli.load_model``)."""
    from ..engine.distributed import default_device
    from ..inference import get_model

    name = args.get("model") or (None if args.get("weights") else "cspdarknet53")
    return get_model(name, args.get("weights") or True, device=default_device(args.get("device")),
                     use_ema=args.get("ema"), num_classes=args.get("num_classes"), weights_dir=args.get("weights_dir"),
                     mirror=args.get("mirror"), offline=args.get("offline"))


@serve.ingress()  # late-bound: __serve_build_asgi_app__ makes the app once the replica holds its model
class CSPNetDeployment:
    """One replica: the model (loaded and warmed up before the replica takes requests) and its app."""

    def __init__(self, model_args: dict, limits: Limits):
        self.handler = ModelHandler(load_model(model_args), limits)
        self.handler.warm_up()
        self._forward = ThreadPoolExecutor(1, thread_name_prefix="cspnet-forward")
        self.predict.set_max_batch_size(limits.max_batch_size)
        self.predict.set_batch_wait_timeout_s(limits.max_wait_ms / 1000)

    @serve.batch(max_batch_size=Limits.max_batch_size, batch_wait_timeout_s=Limits.max_wait_ms / 1000)
    async def predict(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Ray gathers the crops of concurrent calls; the forward runs in a thread, off the replica's event loop."""
        loop = asyncio.get_running_loop()
        return list(await loop.run_in_executor(self._forward, self.handler.predict_batch, torch.stack(crops)))

    def __serve_build_asgi_app__(self):
        return create_app(self.handler, self.predict)


def ray_app(args: Mapping[str, Any] | None = None) -> serve.Application:
    """The Ray Serve application: ``args`` (one mapping: Ray's builder contract, so ``serve run
    cspnet.serve:ray_app k=v ...`` passes its ``k=v`` here) holds the model (:data:`MODEL_KEYS`), the deployment's
    options (:data:`DEPLOYMENT_KEYS`: replicas, autoscaling, per-replica resources) and any
    :class:`~cspnet.serve.handler.Limits` field (``max_batch_size``, ``max_wait_ms``, ...). Strings from the command
    line are converted; an unknown key is an error naming the known ones."""
    args = dict(args or {})
    model = {k: args.pop(k) for k in MODEL_KEYS if k in args}
    for key in ("ema", "offline"):
        if isinstance(model.get(key), str):
            model[key] = model[key].lower() in ("1", "true", "yes")
    if isinstance(model.get("num_classes"), str):
        model["num_classes"] = int(model["num_classes"])
    options = {k: args.pop(k) for k in DEPLOYMENT_KEYS if k in args}
    for key in ("num_replicas", "max_ongoing_requests", "max_queued_requests"):
        if isinstance(options.get(key), str):
            options[key] = "auto" if options[key] == "auto" else int(options[key])
    try:
        limits = Limits.from_mapping(args)
    except InvalidOptionError as e:
        raise InvalidOptionError(f"ray_app: {e}; or a model key {list(MODEL_KEYS)} or a deployment option "
                                 f"{list(DEPLOYMENT_KEYS)}") from None
    # enough concurrent requests per replica to fill a batch (Ray's default, 5, would cap every batch at 5)
    options.setdefault("max_ongoing_requests", max(limits.max_batch_size * 2, 8))
    options.setdefault("name", "cspnet")
    return serve.deployment(CSPNetDeployment, **options).bind(model, limits)


def __getattr__(name: str):
    if name == "app":  # `serve run cspnet.serve:app`: the default model, default limits
        return ray_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
