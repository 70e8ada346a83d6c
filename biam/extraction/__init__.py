"""Images -> packed features with a registered backbone: the frozen pipeline
(:mod:`.extractor`) and the resumable, multi-rank split writer (:mod:`.runner`)."""

from .extractor import FeatureExtractor, build_extractor
from .runner import REPORT_HEADER, extract_split, report_path

__all__ = ["FeatureExtractor", "build_extractor", "REPORT_HEADER", "extract_split", "report_path"]
