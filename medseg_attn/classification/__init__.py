"""Classification: ImageFolder/CSV listings, image transforms, training, the classifier, metrics.

Public API::

    from medseg_attn.classification import Classifier, train_classifier, predict_images, evaluate_classifier
"""

from medseg_attn.classification.listings import list_images
from medseg_attn.classification.predictor import Classifier, evaluate_classifier, predict_images
from medseg_attn.classification.train import train_classifier

__all__ = ["Classifier", "evaluate_classifier", "list_images", "predict_images", "train_classifier"]
