"""Studies of a trained representation (SPEC §7): classifier re-training on frozen
features (`retrain_run`) and the two-stage study of the paper's Figure 1 (`two_stage`)."""

from bbn.tools.study.classifier import CLASSIFIER_RULES, Stage2, retrain_classifier
from bbn.tools.study.features import FrozenFeatures, extract_features, frozen_features, load_run
from bbn.tools.study.retrain import format_retrain, retrain_run
from bbn.tools.study.two_stage import two_stage

__all__ = ["CLASSIFIER_RULES", "FrozenFeatures", "Stage2", "extract_features", "format_retrain",
           "frozen_features", "load_run", "retrain_classifier", "retrain_run", "two_stage"]
