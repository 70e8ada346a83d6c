"""Model, scene head and loss."""

from .biam import BiAM, build_model, load_published_state_dict
from .loss import ranking_loss
from .scene_head import SceneHead

__all__ = ["BiAM", "build_model", "load_published_state_dict", "ranking_loss", "SceneHead"]
