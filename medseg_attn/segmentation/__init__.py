"""Segmentation: datasets, preprocessing, training, sliding-window prediction, batches, explanations, evaluation.

Public API::

    from medseg_attn.segmentation import Predictor, predict_files, train, evaluate_folders, load_dataset
"""

from medseg_attn.segmentation.data.datasets import load_dataset
from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders
from medseg_attn.segmentation.inference.predictor import Prediction, Predictor
from medseg_attn.segmentation.workflows.batch import predict_files
from medseg_attn.segmentation.workflows.train import train

__all__ = ["Prediction", "Predictor", "evaluate_folders", "load_dataset", "predict_files", "train"]
