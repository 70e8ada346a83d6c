from .predict import Predictor

__all__ = ["Predictor"]
