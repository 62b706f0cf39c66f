"""Model configuration with Matterport's attribute names and defaults.

Subclass :class:`Config` and override class attributes, exactly as with Matterport's
``mrcnn.config.Config``.  Instantiating computes the derived values (``BATCH_SIZE``,
``IMAGE_SHAPE``, ``IMAGE_META_SIZE``) and validates the settings; an impossible setting raises
:class:`ConfigError` naming the attribute and the rule.  ``save_json``/``load_json`` let a config
travel beside its weights.

Options added beyond Matterport (each keeps Matterport's behaviour by default):

* ``NORM``: ``"bn"`` (batch norm, frozen unless ``TRAIN_BN``) or ``"gn"`` (GroupNormalization with
  ``GN_GROUPS`` groups, better when training from scratch with small batches).
* ``BACKBONE``: ``"resnet50"``, ``"resnet101"``, ``"resnet18"``, ``"resnet34"`` or a callable
  ``f(input_image, stage5=True, train_bn=..) -> [C2, C3, C4, C5]``.
* ``MASK_HEAD_CHANNELS``: width of the mask head's four convolutions and its deconvolution
  (256, Matterport's; its weight files need 256). On a CPU the mask head is a large part of a
  training step, and its cost grows with the square of the width.
* ``IMAGE_INVERT_BRIGHT``: ``None`` (off) or a grey level: images whose mean exceeds it
  (brightfield, H&E: dark nuclei on a bright background) are inverted (``255 - image``) before
  molding, in training and at inference alike (:func:`mrcnn_nuclei.data.convert.invert_bright`).
* ``PREPROC_CONV``: add a 1x1 convolution named ``PREPROC`` that projects ``IMAGE_CHANNEL_COUNT``
  channels to 3 before ``conv1`` (Mask R-CNN+: RGB + hematoxylin + distance map).
* ``LEARNING_RATE_WARMUP_STEPS``: linear warm-up of the learning rate over that many steps.
* ``LEARNING_RATE_DECAY``: ``"none"`` (constant, Matterport), ``"cosine"``: the rate falls along a
  half cosine from ``LEARNING_RATE`` to ``LEARNING_RATE * LEARNING_RATE_DECAY_FLOOR`` over each
  ``MaskRCNN.train`` call (or over a time budget, :func:`mrcnn_nuclei.recipes.train_budgeted`), or
  ``"step"``: constant, then ``LEARNING_RATE * LEARNING_RATE_DECAY_FLOOR`` from the fraction
  ``LEARNING_RATE_DROP_AT`` of the call (or budget) on.
* ``WEIGHTS_EMA``: momentum of an exponential moving average of the trainable weights kept by the
  optimizer (Keras ``use_ema``; e.g. 0.99 averages over about the last 100 steps); 0 = off. The
  average replaces the weights when a ``train`` call ends (and is what
  :func:`mrcnn_nuclei.recipes.train_budgeted` evaluates); per-epoch checkpoints hold the raw
  weights, and a resumed run starts a new average.
* ``GT_OVERFLOW``: what the loader does with more than ``MAX_GT_INSTANCES`` nuclei in one image:
  ``"largest"`` keeps the largest ones (default), ``"random"`` keeps a random subset (Matterport).
* ``DETECT_MEMORY_LIMIT_GB``: memory bound of one ``detect()`` image (GB, ``"auto"`` = half the
  machine's memory, ``None`` = no check), estimated before the graph runs
  (:mod:`mrcnn_nuclei.inference.memory`). Past it ``detect()`` raises ``DetectMemoryError`` naming
  :func:`mrcnn_nuclei.inference.tiling.tiled_detect`, or with ``AUTO_TILE = True`` runs it.
* ``SKIP_BAD_IMAGES``: ``MaskRCNN.train`` checks every image and mask first
  (:func:`mrcnn_nuclei.data.checks.check_dataset`) and raises listing all bad files (False,
  default) or skips them with a logged count (True).
* ``DISTRIBUTE``: ``"none"`` or ``"data_parallel"``: each batch of ``BATCH_SIZE`` images is split
  over ``GPU_COUNT`` devices (``tf.distribute.MirroredStrategy`` on TensorFlow,
  ``keras.distribution.DataParallel`` on JAX, also across processes after
  ``mrcnn_nuclei.distribute.initialize``); see :mod:`mrcnn_nuclei.distribute`.
* ``LOSS_REDUCTION``: ``"batch"`` (Matterport, default): each loss is a mean over the whole
  batch (all non-neutral anchors / positive ROIs of all images, so images with more nuclei
  weigh more); ``"image"``: a mean per image (0 for an image with nothing to count), then the
  mean over the images.  Data-parallel training is exact with either: one step on ``n``
  devices or processes, each with different images, equals the one-device step on the whole
  batch (``"batch"`` sums each loss's count over the TensorFlow replicas; on JAX the step is one
  global program); ``"image"`` needs no cross-replica count.  See
  :mod:`mrcnn_nuclei.layers.losses`.
* ``MIXED_PRECISION``: ``None``, ``"mixed_float16"`` or ``"mixed_bfloat16"`` (Keras dtype policy
  applied while building; losses, proposals, NMS and detections stay float32).
* ``RESIZE_SEMANTICS``: ``"matterport"`` (default) resizes images and masks exactly as
  Matterport's NumPy code (skimage order-1 resize with a cval-0 border, truncated grey levels;
  corner-aligned nearest masks; mini-masks ``np.around``-ed), so the same weights give the same
  nuclei; ``"project"`` uses edge-clamped bilinear resizing rounded to the nearest grey level,
  so an upscaled image has no dark outer ring (Matterport's cval-0 border darkens the outer
  pixel ring by 12.7 grey levels on average at x2 over 8 DSB images, up to 72 at x1.6;
  ``benchmarks/resize_semantics.py``), which matters for from-scratch training on upscaled
  crops (the ``DSBScratchConfig`` recipe was measured with it).  Mini-masks are equally good
  either way (expand(minimize()) IoU 0.984 vs 0.983 at 28x28).  Used by the loader (training)
  and by ``mold_inputs``/``unmold_detections``.  See :mod:`mrcnn_nuclei.data.image_ops`.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

__all__ = ["Config", "ConfigError", "NucleusConfig", "NucleusInferenceConfig", "inference_config"]


class ConfigError(ValueError):
    """An impossible configuration; the message names the attribute and the rule."""


_RESIZE_MODES = ("none", "square", "pad64", "crop")
_LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
               "mrcnn_mask_loss")
_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


class Config:
    """Base configuration; override attributes in a subclass (Matterport's names)."""

    NAME = None  # Override in sub-classes
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50

    BACKBONE = "resnet101"
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    TOP_DOWN_PYRAMID_SIZE = 256

    NUM_CLASSES = 1  # background + your classes; override in sub-classes

    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    RPN_ANCHOR_STRIDE = 1
    RPN_NMS_THRESHOLD = 0.7
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    PRE_NMS_LIMIT = 6000
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    MASK_SHAPE = [28, 28]
    MASK_HEAD_CHANNELS = 256  # mrcnn_nuclei: width of the mask head's convolutions
    MAX_GT_INSTANCES = 100

    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3

    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001
    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.0,
        "rpn_bbox_loss": 1.0,
        "mrcnn_class_loss": 1.0,
        "mrcnn_bbox_loss": 1.0,
        "mrcnn_mask_loss": 1.0,
    }
    USE_RPN_ROIS = True
    TRAIN_BN = False
    GRADIENT_CLIP_NORM = 5.0

    # --- mrcnn_nuclei additions (Matterport-compatible defaults) ---
    NORM = "bn"
    GN_GROUPS = 32
    PREPROC_CONV = False
    IMAGE_INVERT_BRIGHT = None
    LEARNING_RATE_WARMUP_STEPS = 0
    LEARNING_RATE_DECAY = "none"
    LEARNING_RATE_DECAY_FLOOR = 0.01
    LEARNING_RATE_DROP_AT = 0.8
    WEIGHTS_EMA = 0.0
    GT_OVERFLOW = "largest"
    SEED = None
    DETECT_MEMORY_LIMIT_GB = "auto"
    AUTO_TILE = False
    SKIP_BAD_IMAGES = False
    # data-parallel training (mrcnn_nuclei.distribute): "none" or "data_parallel"
    # (tf.distribute.MirroredStrategy / keras.distribution.DataParallel over GPU_COUNT devices)
    DISTRIBUTE = "none"
    # "batch" (Matterport: means over the whole batch) or "image" (per-image means, averaged)
    LOSS_REDUCTION = "batch"
    # Keras mixed precision: None, "mixed_float16" (GPUs) or "mixed_bfloat16"
    MIXED_PRECISION = None
    RESIZE_SEMANTICS = "matterport"

    def __init__(self):
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        self.MEAN_PIXEL = np.asarray(self.MEAN_PIXEL, dtype=np.float64)
        self.RPN_BBOX_STD_DEV = np.asarray(self.RPN_BBOX_STD_DEV, dtype=np.float64)
        self.BBOX_STD_DEV = np.asarray(self.BBOX_STD_DEV, dtype=np.float64)
        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = np.array([self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM,
                                         self.IMAGE_CHANNEL_COUNT])
        else:
            self.IMAGE_SHAPE = np.array([self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM,
                                         self.IMAGE_CHANNEL_COUNT])
        # image_id(1) + original shape(3) + image shape(3) + window(4) + scale(1) + active ids
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Raise :class:`ConfigError` for an impossible setting. Returns ``self``."""

        def fail(attr, rule):
            raise ConfigError(f"{type(self).__name__}.{attr} = {getattr(self, attr, None)!r}: {rule}")

        if self.IMAGE_RESIZE_MODE not in _RESIZE_MODES:
            fail("IMAGE_RESIZE_MODE", f"must be one of {', '.join(_RESIZE_MODES)}")
        if self.IMAGE_RESIZE_MODE == "square" and self.IMAGE_MAX_DIM % 64:
            fail("IMAGE_MAX_DIM", "must be divisible by 2^6 = 64 with IMAGE_RESIZE_MODE 'square' "
                 "(the FPN downsamples six times); e.g. 256, 512, 1024")
        if self.IMAGE_RESIZE_MODE == "crop" and self.IMAGE_MIN_DIM % 64:
            fail("IMAGE_MIN_DIM", "must be divisible by 2^6 = 64 with IMAGE_RESIZE_MODE 'crop' "
                 "(it is the crop size); e.g. 256, 512")
        if self.IMAGE_RESIZE_MODE == "square" and self.IMAGE_MIN_DIM and \
                self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM:
            fail("IMAGE_MIN_DIM", "must not exceed IMAGE_MAX_DIM")
        if int(self.IMAGE_CHANNEL_COUNT) < 1:
            fail("IMAGE_CHANNEL_COUNT", "must be at least 1")
        if len(self.MEAN_PIXEL) != self.IMAGE_CHANNEL_COUNT:
            fail("MEAN_PIXEL", f"must have IMAGE_CHANNEL_COUNT = {self.IMAGE_CHANNEL_COUNT} values, "
                 f"one per channel (has {len(self.MEAN_PIXEL)})")
        if self.IMAGE_CHANNEL_COUNT != 3 and not self.PREPROC_CONV and \
                not callable(self.BACKBONE):
            pass  # allowed: conv1 simply takes IMAGE_CHANNEL_COUNT inputs (no RGB weights there)
        if int(self.NUM_CLASSES) < 1:
            fail("NUM_CLASSES", "counts the background too and must be at least 1 (2 for nuclei)")
        if self.GPU_COUNT < 1 or self.IMAGES_PER_GPU < 1:
            fail("IMAGES_PER_GPU", "IMAGES_PER_GPU and GPU_COUNT must both be at least 1")
        if not callable(self.BACKBONE) and self.BACKBONE not in _BACKBONES:
            fail("BACKBONE", f"must be one of {', '.join(_BACKBONES)} or a callable")
        if len(self.BACKBONE_STRIDES) != len(self.RPN_ANCHOR_SCALES):
            fail("RPN_ANCHOR_SCALES", f"needs one scale per pyramid level: "
                 f"{len(self.BACKBONE_STRIDES)} (len(BACKBONE_STRIDES))")
        if len(self.RPN_ANCHOR_RATIOS) < 1 or min(self.RPN_ANCHOR_RATIOS) <= 0:
            fail("RPN_ANCHOR_RATIOS", "needs at least one positive ratio")
        if self.RPN_ANCHOR_STRIDE < 1:
            fail("RPN_ANCHOR_STRIDE", "must be at least 1")
        for attr in ("RPN_NMS_THRESHOLD", "DETECTION_NMS_THRESHOLD"):
            if not 0.0 < getattr(self, attr) <= 1.0:
                fail(attr, "is an IoU threshold and must be in (0, 1]")
        if not 0.0 <= self.DETECTION_MIN_CONFIDENCE <= 1.0:
            fail("DETECTION_MIN_CONFIDENCE", "must be in [0, 1]")
        if not 0.0 < self.ROI_POSITIVE_RATIO <= 1.0:
            fail("ROI_POSITIVE_RATIO", "must be in (0, 1]")
        for attr in ("RPN_TRAIN_ANCHORS_PER_IMAGE", "TRAIN_ROIS_PER_IMAGE", "MAX_GT_INSTANCES",
                     "DETECTION_MAX_INSTANCES", "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE",
                     "PRE_NMS_LIMIT", "POOL_SIZE", "MASK_POOL_SIZE", "STEPS_PER_EPOCH"):
            if int(getattr(self, attr)) < 1:
                fail(attr, "must be a positive integer")
        if list(self.MASK_SHAPE) != [2 * self.MASK_POOL_SIZE] * 2:
            fail("MASK_SHAPE", f"must be [2*MASK_POOL_SIZE]*2 = {[2 * self.MASK_POOL_SIZE] * 2} "
                 "(the mask head upsamples its pooled features once, by 2)")
        if len(self.MINI_MASK_SHAPE) != 2 or min(self.MINI_MASK_SHAPE) < 1:
            fail("MINI_MASK_SHAPE", "must be two positive integers (height, width)")
        if len(self.RPN_BBOX_STD_DEV) != 4 or len(self.BBOX_STD_DEV) != 4:
            fail("BBOX_STD_DEV", "BBOX_STD_DEV and RPN_BBOX_STD_DEV need 4 values each")
        unknown = set(self.LOSS_WEIGHTS) - set(_LOSS_NAMES)
        if unknown:
            fail("LOSS_WEIGHTS", f"has unknown keys {sorted(unknown)}; known: {list(_LOSS_NAMES)}")
        if self.NORM not in ("bn", "gn"):
            fail("NORM", "must be 'bn' (batch norm) or 'gn' (group norm)")
        if self.NORM == "gn" and self.GN_GROUPS < 1:
            fail("GN_GROUPS", "must be a positive integer")
        if int(self.MASK_HEAD_CHANNELS) < 1 or (
                self.NORM == "gn" and int(self.MASK_HEAD_CHANNELS) % int(self.GN_GROUPS)):
            fail("MASK_HEAD_CHANNELS", "must be a positive integer (a multiple of GN_GROUPS "
                 "with NORM = 'gn'); Matterport's weights need 256")
        if self.IMAGE_INVERT_BRIGHT is not None and (
                isinstance(self.IMAGE_INVERT_BRIGHT, bool)
                or not isinstance(self.IMAGE_INVERT_BRIGHT, (int, float, np.integer, np.floating))
                or not 0 <= float(self.IMAGE_INVERT_BRIGHT) <= 255):
            fail("IMAGE_INVERT_BRIGHT", "must be None (off) or a grey level between 0 and 255, "
                 "e.g. 127")
        if self.GT_OVERFLOW not in ("largest", "random"):
            fail("GT_OVERFLOW", "must be 'largest' or 'random'")
        if self.RESIZE_SEMANTICS not in ("matterport", "project"):
            fail("RESIZE_SEMANTICS", "must be 'matterport' (Matterport's exact resizing, default) "
                 "or 'project' (edge-clamped, no dark border when upscaling)")
        if self.LEARNING_RATE <= 0:
            fail("LEARNING_RATE", "must be positive")
        if self.LEARNING_RATE_DECAY not in ("none", "cosine", "step"):
            fail("LEARNING_RATE_DECAY", "must be 'none' (constant), 'cosine' or 'step'")
        if not 0.0 <= self.LEARNING_RATE_DROP_AT <= 1.0:
            fail("LEARNING_RATE_DROP_AT", "must be a fraction of the run between 0 and 1")
        if not 0.0 <= self.WEIGHTS_EMA < 1.0:
            fail("WEIGHTS_EMA", "must be 0 (off) or a momentum in (0, 1), e.g. 0.99")
        if not 0.0 <= self.LEARNING_RATE_DECAY_FLOOR <= 1.0:
            fail("LEARNING_RATE_DECAY_FLOOR", "must be a fraction between 0 and 1")
        if self.GRADIENT_CLIP_NORM is not None and self.GRADIENT_CLIP_NORM <= 0:
            fail("GRADIENT_CLIP_NORM", "must be positive or None")
        limit = self.DETECT_MEMORY_LIMIT_GB
        if not (limit is None or limit == "auto" or (
                isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0)):
            fail("DETECT_MEMORY_LIMIT_GB", "must be a positive number of GB, 'auto' (half the "
                 "machine's memory) or None (no check)")
        if self.DISTRIBUTE not in ("none", "data_parallel"):
            fail("DISTRIBUTE", "must be 'none' or 'data_parallel' (spread each batch over "
                 "GPU_COUNT devices; see mrcnn_nuclei.distribute)")
        if self.LOSS_REDUCTION not in ("batch", "image"):
            fail("LOSS_REDUCTION", "must be 'batch' (Matterport: each loss a mean over the whole "
                 "batch) or 'image' (a mean per image, then over the images)")
        if self.MIXED_PRECISION not in (None, "mixed_float16", "mixed_bfloat16"):
            fail("MIXED_PRECISION", "must be None, 'mixed_float16' or 'mixed_bfloat16'")
        if not isinstance(self.SKIP_BAD_IMAGES, (bool, np.bool_)):
            fail("SKIP_BAD_IMAGES", "must be True (skip unreadable images, logged) or False "
                 "(MaskRCNN.train raises listing them)")
        if not isinstance(self.AUTO_TILE, (bool, np.bool_)):
            fail("AUTO_TILE", "must be True (tile images over DETECT_MEMORY_LIMIT_GB) or False "
                 "(raise)")
        return self

    # ------------------------------------------------------------------ derived helpers
    @property
    def BACKBONE_SHAPES(self):
        """[[h, w], ...] feature map size per pyramid level for IMAGE_SHAPE."""
        return self.backbone_shapes(self.IMAGE_SHAPE)

    def backbone_shapes(self, image_shape):
        """Feature-map [h, w] per level of BACKBONE_STRIDES for an image of ``image_shape``."""
        return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                         for s in self.BACKBONE_STRIDES])

    # ------------------------------------------------------------------ display / JSON
    def to_dict(self):
        """All upper-case attributes as JSON-ready values (arrays become lists)."""
        out = {}
        for name in sorted(dir(self)):
            if not name.isupper() or name.startswith("_") or name == "BACKBONE_SHAPES":
                continue
            value = getattr(self, name)
            if callable(value):
                value = getattr(value, "__name__", repr(value))
            out[name] = _jsonable(value)
        return out

    def display(self):
        """Print every configuration value, one per line."""
        print("\nConfigurations:")
        for key, value in self.to_dict().items():
            print(f"{key:30} {value}")
        print("\n")

    def save_json(self, path):
        """Write the config as JSON to ``path`` (atomically, with the user's umask).

        NumPy scalars and arrays become numbers and lists.  A callable attribute (e.g. a
        ``BACKBONE`` function) cannot be stored: its ``module.qualname`` is written under
        ``"callables"`` and :meth:`read_json` asks for a Config class that defines it.  A value
        JSON cannot hold raises :class:`ConfigError` naming the attribute; nothing is written.
        """
        from .fileio import atomic_write_text

        values = self.to_dict()
        data = {"class": type(self).__name__, "values": values}
        funcs = {name: _callable_name(getattr(self, name)) for name in values
                 if callable(getattr(self, name, None))}
        if funcs:
            data["callables"] = funcs
        try:
            text = json.dumps(data, indent=2, allow_nan=True)
        except (TypeError, ValueError) as err:
            bad = []
            for name, value in values.items():
                try:
                    json.dumps(value)
                except (TypeError, ValueError):
                    bad.append(f"{name}={value!r:.60}")
            raise ConfigError(f"save_json({path}): {', '.join(bad) or err} cannot be written as "
                              "JSON; use numbers, strings, lists or NumPy values") from None
        return atomic_write_text(path, text)

    @classmethod
    def from_dict(cls, values):
        """Build a config of this class (or a subclass) with ``values`` overriding attributes."""
        derived = {"BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE"}
        attrs = {}
        for key, value in values.items():
            if key in derived:
                continue
            if not hasattr(cls, key):
                raise ConfigError(f"unknown config attribute {key!r}")
            default = getattr(cls, key)
            if isinstance(default, np.ndarray):
                value = np.asarray(value, dtype=default.dtype)
            elif isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            attrs[key] = value
        for key in [k for k in attrs if callable(getattr(cls, k, None))]:
            attrs.pop(key)  # a callable cannot travel in JSON; keep the class's own
        return type(cls.__name__, (cls,), attrs)()

    @classmethod
    def read_json(cls, path):
        """The ``values`` dict of a config JSON written by :meth:`save_json`, checked for this class.

        Raises FileNotFoundError, ConfigError for a file that is not such JSON, and ConfigError when
        the file was saved from a config with a callable attribute (e.g. ``BACKBONE``) that this
        class does not define as a callable (JSON holds only the function's name; load it with
        the Config subclass that sets it).
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            with open(path) as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not a config JSON written by Config.save_json: {err}") \
                from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a config JSON written by Config.save_json")
        values = data.get("values", data)
        funcs = data.get("callables") or {}
        if not funcs:  # files of older versions: a backbone that is no known name was a callable
            backbone = values.get("BACKBONE")
            if isinstance(backbone, str) and backbone not in _BACKBONES:
                funcs = {"BACKBONE": backbone}
        missing = {k: v for k, v in funcs.items() if not callable(getattr(cls, k, None))}
        if missing:
            names = ", ".join(f"{k} = {v}" for k, v in missing.items())
            verb = "is a function" if len(missing) == 1 else "are functions"
            raise ConfigError(
                f"{path} was saved from a config {data.get('class', '')!s} whose {names} {verb}; "
                "JSON holds only the name. Load it with the Config subclass that defines it "
                f"(MyConfig.load_json({path!r})); {cls.__name__} does not define "
                f"{', '.join(missing)} as a function.")
        return values

    @classmethod
    def load_json(cls, path):
        """Read a config written by :meth:`save_json` (see :meth:`read_json` for the errors)."""
        return cls.from_dict(cls.read_json(path))

    def __repr__(self):
        return f"<{type(self).__name__} NAME={self.NAME!r}>"


def _callable_name(value):
    """``module.qualname`` of a function or class (its repr for anything else)."""
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    module = getattr(value, "__module__", None)
    return f"{module}.{name}" if name and module else repr(value)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):  # np.bool_, np.str_, ... (np.integer/floating below too)
        return value.item()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class NucleusConfig(Config):
    """Training preset with the values of Matterport's nucleus sample."""

    NAME = "nucleus"
    IMAGES_PER_GPU = 6
    NUM_CLASSES = 1 + 1
    STEPS_PER_EPOCH = (657 - 25) // IMAGES_PER_GPU
    VALIDATION_STEPS = max(1, 25 // IMAGES_PER_GPU)
    DETECTION_MIN_CONFIDENCE = 0
    BACKBONE = "resnet50"
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 512
    IMAGE_MAX_DIM = 512
    IMAGE_MIN_SCALE = 2.0
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    POST_NMS_ROIS_TRAINING = 1000
    POST_NMS_ROIS_INFERENCE = 2000
    RPN_NMS_THRESHOLD = 0.9
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    TRAIN_ROIS_PER_IMAGE = 128
    MAX_GT_INSTANCES = 200
    DETECTION_MAX_INSTANCES = 400
    MEAN_PIXEL = np.array([43.53, 39.56, 48.22])
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)


class NucleusInferenceConfig(NucleusConfig):
    """Inference preset of Matterport's nucleus sample (one image, pad64, RPN NMS 0.7)."""

    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "pad64"
    RPN_NMS_THRESHOLD = 0.7


def inference_config(config, **overrides):
    """The inference twin of a training ``config`` (the one derivation every loader uses).

    Same class and values, with one image per batch (``GPU_COUNT = IMAGES_PER_GPU = 1``) and a
    training ``"crop"`` resize turned into ``"pad64"`` (whole images, padded to a multiple of 64,
    at the training ``IMAGE_MIN_SCALE``); other resize modes are kept.  ``overrides``
    (upper-case attribute names) are applied last, e.g. ``RPN_NMS_THRESHOLD=0.7`` as Matterport's
    nucleus inference.  ``config`` may be an instance (values set on it are kept) or a class.
    Returns a new instance of a subclass of ``config``'s class; ``config`` is not changed.
    """
    cls = config if isinstance(config, type) else type(config)
    derived = ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE")
    values = {} if isinstance(config, type) else {
        k: v for k, v in vars(config).items() if k.isupper() and k not in derived}
    values.update(GPU_COUNT=1, IMAGES_PER_GPU=1)
    if (values.get("IMAGE_RESIZE_MODE") or cls.IMAGE_RESIZE_MODE) == "crop":
        values["IMAGE_RESIZE_MODE"] = "pad64"
    bad = [k for k in overrides if not k.isupper() or not hasattr(cls, k)]
    if bad:
        raise ConfigError(f"inference_config: unknown Config attribute(s) {bad} for "
                          f"{cls.__name__}; use upper-case names of mrcnn_nuclei.config.Config")
    values.update(overrides)
    return type(cls.__name__, (cls,), values)()
