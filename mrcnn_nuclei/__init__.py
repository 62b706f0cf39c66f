"""mrcnn_nuclei: Mask R-CNN for cell-nuclei instance segmentation on TensorFlow 2 / Keras 3."""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
