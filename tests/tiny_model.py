"""A tiny Mask R-CNN (ResNet-18 + GN, 64 px crops, light heads) for model-folder and CLI tests."""

import numpy as np


def tiny_config(**attrs):
    """Training config instance of a tiny model (seconds to build on a CPU)."""
    from mrcnn_nuclei.config import NucleusConfig

    base = dict(NAME="tiny", BACKBONE="resnet18", NORM="gn", GN_GROUPS=8, TRAIN_BN=True,
                IMAGES_PER_GPU=1, IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64,
                IMAGE_MIN_SCALE=0, TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64,
                RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), PRE_NMS_LIMIT=200,
                POST_NMS_ROIS_TRAINING=32, POST_NMS_ROIS_INFERENCE=32, TRAIN_ROIS_PER_IMAGE=16,
                MAX_GT_INSTANCES=20, DETECTION_MAX_INSTANCES=12, DETECTION_MIN_CONFIDENCE=0.0,
                MINI_MASK_SHAPE=(14, 14), MEAN_PIXEL=np.array([40.0, 40.0, 40.0]))
    base.update(attrs)
    return type("TinyConfig", (NucleusConfig,), base)()


def tiny_inference_model(model_dir, seed=0, **attrs):
    """A MaskRCNN in inference mode with random weights drawn from ``seed``."""
    import keras

    from mrcnn_nuclei.config import inference_config
    from mrcnn_nuclei.model import MaskRCNN

    keras.utils.set_random_seed(seed)
    return MaskRCNN("inference", inference_config(tiny_config(**attrs)), model_dir=str(model_dir))
