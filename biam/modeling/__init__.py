"""Model, scene head and loss."""

from .biam import BiAM, build_model
from .loss import ranking_loss
from .scene_head import SceneHead

__all__ = ["BiAM", "build_model", "ranking_loss", "SceneHead"]
