"""Weights: the published records (:mod:`.records`), where files come from (:mod:`.sources`), reading and writing
them (:mod:`.files`), their three layouts (:mod:`.convert`), and the one call that does it all
(:mod:`.loading`): ``cspnet.weights.load(model_or_spec, pretrained, **where)``: resolve -> read -> convert -> load.
"""

from .._lazy import lazy_exports

_EXPORTS = {name: "loading" for name in ("Found", "PUBLISHED", "Pretrained", "load", "load_state", "locate", "read")}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
