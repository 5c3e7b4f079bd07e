"""What a model is, as data: :class:`ModelSpec` (torch is imported only to build one).

A spec is made once, at the edge (from a model name, a config file or a checkpoint), and everything below builds
from it. Every file cspnet writes (training checkpoints, converted weights, exports) records the spec of its model
(:meth:`ModelSpec.to_meta`), so a checkpoint carries its model: architecture, head, class names and eval
preprocessing come back with :meth:`ModelSpec.from_meta`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .data.presets import EvalPreset
from .errors import CheckpointError, InvalidOptionError

if TYPE_CHECKING:  # the modules are imported by build(): a spec (weight records, `cspnet list`) needs no torch
    from .models import CSPNet, ImageClassifier

SPEC_VERSION = 1
# ImageNet-21k has 21,843 classes; a head beyond this is a typo or a hostile file, and would take gigabytes
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class BackboneOptions:
    """:class:`~cspnet.models.CSPNet` options; ``None`` leaves CSPNet's default (which it documents and checks)."""

    in_chans: int | None = None
    out_indices: int | tuple[int, ...] | None = None
    frozen_stages: int | None = None
    norm_eval: bool | None = None
    drop_path_rate: float | None = None
    zero_init_last: bool | None = None

    def __post_init__(self):
        if isinstance(self.out_indices, list):  # from JSON or a config file
            object.__setattr__(self, "out_indices", tuple(self.out_indices))

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class ModelSpec:
    """A classifier (or backbone) to build, and how to feed it. ``arch``: a name in :data:`~cspnet.models.ARCHS`;
    ``eval``: its eval preprocessing; ``num_classes``: width of the linear head (0: none, the model returns pooled
    features); ``classes``: the class names in label order (or None); ``drop_rate``: dropout before the head;
    ``backbone``: CSPNet options; ``name``: what outputs and file names call the model (the published weights'
    name, a training run's config name, ...)."""

    arch: str
    eval: EvalPreset
    num_classes: int = 1000
    classes: tuple[str, ...] | None = None
    drop_rate: float = 0.0
    backbone: BackboneOptions = field(default_factory=BackboneOptions)
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise InvalidOptionError(f"num_classes={self.num_classes!r} must be a non-negative integer")
        if self.num_classes > MAX_CLASSES:
            raise InvalidOptionError(f"num_classes={self.num_classes:,} is over {MAX_CLASSES:,}: its head alone would "
                                     f"take {self.num_classes * 2048 * 4 / 2**30:,.0f} GB or more")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if len(self.classes) != self.num_classes:
                raise InvalidOptionError(f"{len(self.classes)} class names for a {self.num_classes}-class head")
        object.__setattr__(self, "name", self.name or self.arch)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def build(self, features_only: bool = False, *, init: bool = True) -> ImageClassifier | CSPNet:
        """The module: a classifier, or with ``features_only`` the backbone alone, whose ``forward`` returns every
        stage's map unless ``backbone.out_indices`` says otherwise. ``init=False``: its tensors on the meta device
        (no memory, no random init), for weights that replace them all: :func:`cspnet.weights.load_state` assigns
        a file's tensors and initialises what they leave out (a new head)."""
        import contextlib

        import torch

        from .data.transforms import EvalTransform
        from .models import CSPNet, ImageClassifier, get_arch
        options = self.backbone.kwargs()
        with contextlib.nullcontext() if init else torch.device("meta"):
            if features_only:
                options.setdefault("out_indices", tuple(range(get_arch(self.arch).num_stages)))
                model: ImageClassifier | CSPNet = CSPNet(self.arch, **options)
            else:
                model = ImageClassifier(self.arch, self.num_classes, self.drop_rate, **options)
        if not features_only:
            model.classes = list(self.classes) if self.classes is not None else None
            model.transform = EvalTransform(self.eval)
        model.name = self.name
        return model

    @classmethod
    def of(cls, model: ImageClassifier, transform: Any = None) -> "ModelSpec":
        """The spec of a live classifier, read from the module itself (after any ``reset_classifier`` or
        ``model.transform = ...``), so that nothing can go stale; ``transform``: its eval preprocessing (an
        ``EvalTransform``; default ``model.transform``)."""
        import inspect
        backbone, transform = model.backbone, transform or model.transform
        if transform is None:
            raise InvalidOptionError(f"{getattr(model, 'name', 'the model')} has no eval preprocessing: set "
                                     f"model.transform = cspnet.get_transform(...) first")
        live = {"in_chans": backbone.stem.conv1.conv.in_channels, "out_indices": backbone.out_indices,
                "frozen_stages": backbone.frozen_stages, "norm_eval": backbone.norm_eval}
        defaults = {k: p.default for k, p in inspect.signature(type(backbone)).parameters.items()}
        defaults["out_indices"] = (backbone.arch.num_stages - 1,)  # CSPNet's -1, resolved
        options = BackboneOptions(**{k: v for k, v in live.items() if v != defaults[k]})
        return cls(backbone.arch.name, transform.preset, model.num_classes, model.classes, model.head.drop.p,
                   options, getattr(model, "name", ""))

    def to_meta(self) -> dict[str, Any]:
        """Plain JSON data: what checkpoints and exports store."""
        meta = {"spec_version": SPEC_VERSION, **dataclasses.asdict(self), "backbone": self.backbone.kwargs()}
        return json.loads(json.dumps(meta))  # tuples as lists: what reading a file gives back

    @classmethod
    def from_meta(cls, meta: Any, source: str) -> "ModelSpec":
        """The inverse of :meth:`to_meta`, strict: ``source`` (a file) is named in any error."""
        try:
            if not isinstance(meta, Mapping) or meta.get("spec_version") != SPEC_VERSION:
                raise ValueError(f"expected a dict with spec_version {SPEC_VERSION}")
            values = {k: v for k, v in meta.items() if k != "spec_version"}
            ev, bb = dict(values.pop("eval")), dict(values.pop("backbone", {}))
            ev.update(mean=tuple(map(float, ev["mean"])), std=tuple(map(float, ev["std"])))
            spec = cls(eval=EvalPreset(**ev), backbone=BackboneOptions(**bb), **values)
            if not isinstance(spec.arch, str) or not isinstance(spec.name, str):
                raise ValueError("arch and name must be strings")
        except (TypeError, ValueError, KeyError, InvalidOptionError) as e:
            raise CheckpointError(f"{source}: its recorded model spec is unreadable ({type(e).__name__}: {e}); the "
                                  f"file is damaged, or was written by another version of cspnet") from None
        return spec
