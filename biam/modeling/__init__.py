"""The model and its loss."""

from .biam import BiAM, build_model, load_published_state_dict
from .loss import ranking_loss

__all__ = ["BiAM", "build_model", "load_published_state_dict", "ranking_loss"]
