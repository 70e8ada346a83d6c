"""The methods (one file each, registered by name: ``MODEL.NAME``) and their losses."""

from .registry import (
    DEFAULT_METHOD, Method, UnknownMethodError, build_model, get_method, list_methods, method_of, register_method,
    unregister_method,
)
from .loss import ranking_loss
from .biam import BiAM, load_published_state_dict  # registers "biam"
from . import clip_zeroshot as _clip_zeroshot  # noqa: E402,F401  registers "clip_zeroshot" (isort: skip)
from . import fast0tag as _fast0tag  # noqa: E402,F401  registers "fast0tag" (isort: skip)

__all__ = ["BiAM", "build_model", "load_published_state_dict", "ranking_loss", "Method", "UnknownMethodError",
           "register_method", "get_method", "list_methods", "unregister_method", "method_of", "DEFAULT_METHOD"]
