"""MaskRCNN: Matterport's model surface (build, train, detect, weights) on the Keras 3 graph of
:mod:`mrcnn_nuclei.layers`.

    model = MaskRCNN("training", config, model_dir="logs")
    model.train(train_ds, val_ds, learning_rate=config.LEARNING_RATE, epochs=20, layers="heads")
    model = MaskRCNN("inference", config, model_dir="logs")
    results = model.detect([image])   # [{"rois", "class_ids", "scores", "masks"}]
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re

import keras
import numpy as np
from keras import layers, ops

from . import distribute
from .layers import losses as L
from .layers.backbone import FrozenBatchNorm, build_backbone
from .layers.detection import DetectionLayer, PadDetections, TrimDetections, WindowFromMeta
from .layers.detection_targets import DetectionTargetLayer, NormBoxes
from .layers.fpn import fpn_graph
from .layers.heads import TakeFirst, build_fpn_mask_graph, fpn_classifier_graph
from .layers.proposals import ProposalLayer
from .layers.roi_align import PyramidROIAlign
from .layers.rpn import PyramidAnchors, build_rpn_model, rpn_on_pyramid

__all__ = ["MaskRCNN", "MaskRCNNTrainingModel", "LAYER_REGEX", "WarmUp", "LearningRateDecay",
           "cosine_factor", "AtomicCheckpoint", "find_last_checkpoint", "checkpoint_epoch",
           "log"]

logger = logging.getLogger(__name__)

_HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)|(PREPROC)"
LAYER_REGEX = {
    "heads": _HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + _HEADS,
    "all": ".*",
}

_CKPT_RE = re.compile(r"mask_rcnn_[\w-]*?(\d{4})\.(weights\.h5|h5)$")
#: Run folder: <name><YYYYmmddTHHMM[SS]>[_<n>] (Matterport's name plus seconds and a suffix that
#: keeps two runs started in the same second apart).
_RUN_RE = re.compile(r"(?P<name>.*?)(?P<stamp>\d{8}T\d{4}(?:\d{2})?)(?:_(?P<n>\d+))?")


def _run_key(folder_name):
    """Sort key (time stamp, collision number) of a run folder name; None if it is not one."""
    m = _RUN_RE.fullmatch(folder_name)
    if not m:
        return None
    stamp = m.group("stamp")
    return stamp + "00" * (len(stamp) == 13), int(m.group("n") or 1), m.group("name")


def checkpoint_epoch(path):
    """Epoch of a checkpoint ``mask_rcnn_<name>_<epoch>.weights.h5`` (or ``.h5``) from its file
    name, as :meth:`MaskRCNN.set_log_dir` reads it; 0 for any other file name."""
    m = _CKPT_RE.search(os.path.basename(os.fspath(path)))
    return int(m.group(1)) if m else 0


def find_last_checkpoint(model_dir, name=None):
    """Newest checkpoint ``mask_rcnn_*_<epoch>.weights.h5`` under ``model_dir``.

    name: a config NAME (lower-cased): only run folders ``<name><YYYYmmddTHHMM[SS]>[_<n>]`` of
        exactly that NAME count (Matterport's ``find_last``); None: run folders of any NAME.
    The newest run folder (by its time stamp, then collision number) that holds a checkpoint is
    chosen, and in it the checkpoint of the highest epoch.  Raises FileNotFoundError naming the
    folder when there is none.
    """
    model_dir = os.fspath(model_dir)
    key = None if name is None else str(name).lower()
    try:
        entries = os.listdir(model_dir)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    runs = []
    for d in entries:
        k = _run_key(d)
        if k and (key is None or k[2] == key) and os.path.isdir(os.path.join(model_dir, d)):
            runs.append((k[:2], d))
    what = f"'{key}<YYYYmmddTHHMM[SS]>'" if key is not None else "'<name><YYYYmmddTHHMM[SS]>'"
    if not runs:
        raise FileNotFoundError(
            f"no run folder {what} in model_dir {model_dir!r}: nothing to resume; train first "
            "or pass a weights path")
    runs.sort()
    # newest run folder first; a run stopped before its first checkpoint is passed over
    for _, d in reversed(runs):
        folder = os.path.join(model_dir, d)
        ckpts = sorted((int(m.group(1)), f) for f in os.listdir(folder)
                       for m in [_CKPT_RE.search(f)] if m and f.startswith("mask_rcnn"))
        if ckpts:
            return os.path.join(folder, ckpts[-1][1])
    raise FileNotFoundError(f"no run folder {what} in model_dir {model_dir!r} holds a checkpoint "
                            "(mask_rcnn_<name>_<epoch>.weights.h5); newest folder: "
                            f"{os.path.join(model_dir, runs[-1][1])!r}")


def log(text, array=None):
    """Print ``text`` and, for an array, its shape, min and max (Matterport's helper)."""
    if array is not None:
        array = np.asarray(array)
        text = f"{text:25s} shape: {str(array.shape):20s} "
        if array.size:
            text += f"min: {array.min():10.5f} max: {array.max():10.5f} {array.dtype}"
        else:
            text += f"min: {'':10s} max: {'':10s} {array.dtype}"
    print(text)


# ------------------------------------------------------------------------------------ training
@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ~0 to ``learning_rate`` over ``warmup_steps``, constant after, times
    ``scale``: a non-trainable variable (1.0) that :class:`LearningRateDecay` lowers as a run
    progresses."""

    def __init__(self, learning_rate, warmup_steps):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.scale = keras.Variable(1.0, trainable=False, dtype="float32", name="lr_scale")

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        frac = ops.minimum(step / float(max(self.warmup_steps, 1)), 1.0)
        return self.learning_rate * frac * ops.convert_to_tensor(self.scale)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def cosine_factor(progress, floor):
    """Half-cosine multiplier: 1 at ``progress`` 0, ``floor`` at 1 (progress clipped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


class LearningRateDecay(keras.callbacks.Callback):
    """Sets ``schedule.scale`` (a :class:`WarmUp`) to :func:`cosine_factor` of the run's progress
    before every batch.

    progress: callable ``() -> fraction done``; default: batches seen / ``total_steps``.
    ``MaskRCNN.train`` adds one (steps of that call) when ``LEARNING_RATE_DECAY == "cosine"``
    unless ``custom_callbacks`` holds one already (e.g. a time-budget one); it also fills in
    ``schedule`` when it is None.
    """

    def __init__(self, floor=0.01, total_steps=None, progress=None, schedule=None):
        super().__init__()
        if progress is None and not total_steps:
            raise ValueError("LearningRateDecay needs total_steps or a progress callable")
        self.floor = float(floor)
        self.total_steps = total_steps
        self.progress = progress
        self.schedule = schedule
        self.steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        done = self.progress() if self.progress is not None else self.steps / self.total_steps
        self.schedule.scale.assign(cosine_factor(done, self.floor))

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


class MaskRCNNTrainingModel(keras.Model):
    """Functional training graph whose loss is the LOSS_WEIGHTS-weighted sum of the five
    Mask R-CNN losses; ``fit`` reports each of them and the total as ``loss``."""

    def __init__(self, *args, loss_weights=None, mask_slots=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_weights_ = dict(loss_weights or {})
        self.mask_slots = mask_slots
        self._trackers = {n: keras.metrics.Mean(name=n) for n in L.LOSS_NAMES}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """x: the training-batch dict; y_pred: the dict of graph outputs -> total loss."""
        active = x["input_image_meta"][:, 12:]
        k = self.mask_slots or y_pred["mrcnn_mask"].shape[1]
        parts = {
            "rpn_class_loss": L.rpn_class_loss(x["input_rpn_match"], y_pred["rpn_class_logits"]),
            "rpn_bbox_loss": L.rpn_bbox_loss(x["input_rpn_bbox"], x["input_rpn_match"],
                                             y_pred["rpn_bbox"]),
            "mrcnn_class_loss": L.mrcnn_class_loss(y_pred["target_class_ids"],
                                                   y_pred["mrcnn_class_logits"], active),
            "mrcnn_bbox_loss": L.mrcnn_bbox_loss(y_pred["target_bbox"], y_pred["target_class_ids"],
                                                 y_pred["mrcnn_bbox"]),
            "mrcnn_mask_loss": L.mrcnn_mask_loss(y_pred["target_mask"][:, :k],
                                                 y_pred["target_class_ids"][:, :k],
                                                 y_pred["mrcnn_mask"]),
        }
        total = 0.0
        for name, value in parts.items():
            self._trackers[name].update_state(value)
            total = total + float(self.loss_weights_.get(name, 1.0)) * value
        # weight decay is applied by the optimizer (decoupled), not added here
        return distribute.scale_loss(total)

    @property
    def metrics(self):
        return list(super().metrics) + list(self._trackers.values())


class AtomicCheckpoint(keras.callbacks.Callback):
    """Write ``path_pattern.format(epoch=epoch + 1)`` after every epoch with
    :func:`mrcnn_nuclei.fileio.atomic_write` (temp file in the same folder, fsync, rename, the
    user's umask).  Before writing, the free disk space is checked against the size of the
    weights; a failed save raises ``OSError`` naming the checkpoint and leaves earlier
    checkpoints (and any older file of that name) whole."""

    def __init__(self, path_pattern):
        super().__init__()
        self.path_pattern = path_pattern

    def on_epoch_end(self, epoch, logs=None):
        from .fileio import atomic_write

        path = self.path_pattern.format(epoch=epoch + 1)
        atomic_write(path, lambda tmp: self.model.save_weights(tmp, overwrite=True),
                     min_free_bytes=_weights_nbytes(self.model))


def _weights_nbytes(keras_model):
    """About the bytes a weights file of ``keras_model`` needs (variables + 1 MB of HDF5)."""
    total = 0
    for v in getattr(keras_model, "weights", []) or []:
        shape = getattr(v, "shape", ())
        size = int(np.prod([int(s) for s in shape])) if len(shape) else 1
        total += size * np.dtype(getattr(v, "dtype", "float32") or "float32").itemsize
    return total + (1 << 20)


def _mask_slots(config):
    """Number of leading ROI slots that can hold positives: int(TRAIN_ROIS * RATIO)."""
    return max(1, int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO))


def _progress_logger(log_dir):
    """TensorBoard callback writing to ``log_dir``; a CSV log (``training_log.csv``) instead
    when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        logger.info("tensorboard is not installed; logging losses to %s/training_log.csv",
                    log_dir)
        return keras.callbacks.CSVLogger(os.path.join(log_dir, "training_log.csv"), append=True)
    return keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False)


class _dtype_policy:
    """Context: Keras global dtype policy ``name`` (None: unchanged) while building."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        if self.name:
            keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


# ------------------------------------------------------------------------------------ facade
class MaskRCNN:
    """Mask R-CNN with Matterport's API: ``MaskRCNN(mode, config, model_dir)``.

    mode: "training" (a :class:`MaskRCNNTrainingModel` whose inputs are the training-batch
    dict of docs/INTERFACES.md) or "inference" (inputs input_image [B, H, W, C] and
    input_image_meta; outputs detections, mrcnn_class, mrcnn_bbox, mrcnn_mask, rpn_rois,
    rpn_class, rpn_bbox).
    """

    def __init__(self, mode, config, model_dir):
        if mode not in ("training", "inference"):
            raise ValueError(f"MaskRCNN: mode must be 'training' or 'inference', got {mode!r}")
        if not getattr(config, "NAME", None):
            raise ValueError("MaskRCNN: config.NAME must be set (it names the log folders and "
                             "checkpoints); override NAME in your Config subclass")
        self.mode = mode
        self.config = config
        self.model_dir = os.fspath(model_dir)
        self.epoch = 0
        self.log_dir = None
        self.checkpoint_path = None
        self.distribution = distribute.for_config(config)
        with self.distribution.scope(), _dtype_policy(getattr(config, "MIXED_PRECISION", None)):
            self.keras_model = self.build(mode, config)
        self.set_log_dir()

    # -------------------------------------------------------------------------------- build
    def build(self, mode, config):
        """Build and return the Keras model for ``mode`` (see the class docstring)."""
        c = config
        channels = int(c.IMAGE_CHANNEL_COUNT)
        if mode == "training":
            h, w = int(c.IMAGE_SHAPE[0]), int(c.IMAGE_SHAPE[1])
            if h % 64 or w % 64:
                raise ValueError(f"training image size {h}x{w} must be divisible by 64 "
                                 "(Config.IMAGE_MAX_DIM / IMAGE_MIN_DIM)")
            input_image = keras.Input((h, w, channels), name="input_image")
        else:
            input_image = keras.Input((None, None, channels), name="input_image")
        input_meta = keras.Input((c.IMAGE_META_SIZE,), name="input_image_meta")

        c2, c3, c4, c5 = build_backbone(input_image, c)
        p2, p3, p4, p5, p6 = fpn_graph(c2, c3, c4, c5, c.TOP_DOWN_PYRAMID_SIZE)
        rpn_maps = [p2, p3, p4, p5, p6]
        mrcnn_maps = [p2, p3, p4, p5]

        anchors = PyramidAnchors(c.RPN_ANCHOR_SCALES, c.RPN_ANCHOR_RATIOS, c.BACKBONE_STRIDES,
                                 c.RPN_ANCHOR_STRIDE, name="anchors")(input_image)
        rpn = build_rpn_model(c.RPN_ANCHOR_STRIDE, len(c.RPN_ANCHOR_RATIOS),
                              c.TOP_DOWN_PYRAMID_SIZE)
        rpn_class_logits, rpn_class, rpn_bbox = rpn_on_pyramid(rpn, rpn_maps)
        count = c.POST_NMS_ROIS_TRAINING if mode == "training" else c.POST_NMS_ROIS_INFERENCE
        rpn_rois = ProposalLayer(count, c.RPN_NMS_THRESHOLD, c.PRE_NMS_LIMIT, c.RPN_BBOX_STD_DEV,
                                 name="ROI")(rpn_class, rpn_bbox, anchors)
        head_args = dict(norm=c.NORM, train_bn=c.TRAIN_BN, gn_groups=c.GN_GROUPS)
        mask_head = build_fpn_mask_graph(c.NUM_CLASSES, **head_args)

        if mode == "training":
            if not c.USE_RPN_ROIS:
                raise NotImplementedError("USE_RPN_ROIS = False (externally generated ROIs) is "
                                          "not supported; set Config.USE_RPN_ROIS = True")
            mini = tuple(c.MINI_MASK_SHAPE) if c.USE_MINI_MASK else (h, w)
            in_match = keras.Input((None, 1), dtype="int32", name="input_rpn_match")
            in_rpn_bbox = keras.Input((c.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), name="input_rpn_bbox")
            in_gt_ids = keras.Input((c.MAX_GT_INSTANCES,), dtype="int32",
                                    name="input_gt_class_ids")
            in_gt_boxes = keras.Input((c.MAX_GT_INSTANCES, 4), name="input_gt_boxes")
            in_gt_masks = keras.Input(mini + (c.MAX_GT_INSTANCES,), dtype="bool",
                                      name="input_gt_masks")
            gt_boxes = NormBoxes(name="norm_gt_boxes")(in_gt_boxes, input_image)
            rois, t_ids, t_bbox, t_mask = DetectionTargetLayer(
                c.TRAIN_ROIS_PER_IMAGE, c.ROI_POSITIVE_RATIO, c.BBOX_STD_DEV, c.MASK_SHAPE,
                c.USE_MINI_MASK, seed=c.SEED, name="proposal_targets")(
                rpn_rois, in_gt_ids, gt_boxes, in_gt_masks)
            pooled = PyramidROIAlign((c.POOL_SIZE, c.POOL_SIZE), name="roi_align_classifier")(
                rois, input_image, mrcnn_maps)
            logits, probs, bbox = fpn_classifier_graph(
                pooled, c.NUM_CLASSES, c.FPN_CLASSIF_FC_LAYERS_SIZE, c.POOL_SIZE, **head_args)
            # positives always occupy the first int(T * ratio) slots and only positives have
            # a mask loss, so the mask branch only runs on those slots
            mask_rois = TakeFirst(_mask_slots(c), name="positive_rois")(rois)
            mpooled = PyramidROIAlign((c.MASK_POOL_SIZE, c.MASK_POOL_SIZE),
                                      name="roi_align_mask")(mask_rois, input_image, mrcnn_maps)
            masks = mask_head(mpooled)
            inputs = {"input_image": input_image, "input_image_meta": input_meta,
                      "input_rpn_match": in_match, "input_rpn_bbox": in_rpn_bbox,
                      "input_gt_class_ids": in_gt_ids, "input_gt_boxes": in_gt_boxes,
                      "input_gt_masks": in_gt_masks}
            outputs = {"rpn_class_logits": rpn_class_logits, "rpn_class": rpn_class,
                       "rpn_bbox": rpn_bbox, "rpn_rois": rpn_rois, "rois": rois,
                       "target_class_ids": t_ids, "target_bbox": t_bbox, "target_mask": t_mask,
                       "mrcnn_class_logits": logits, "mrcnn_class": probs, "mrcnn_bbox": bbox,
                       "mrcnn_mask": masks}
            return MaskRCNNTrainingModel(inputs, outputs, loss_weights=c.LOSS_WEIGHTS,
                                         mask_slots=_mask_slots(c), name="mask_rcnn")

        pooled = PyramidROIAlign((c.POOL_SIZE, c.POOL_SIZE), name="roi_align_classifier")(
            rpn_rois, input_image, mrcnn_maps)
        logits, probs, bbox = fpn_classifier_graph(
            pooled, c.NUM_CLASSES, c.FPN_CLASSIF_FC_LAYERS_SIZE, c.POOL_SIZE, **head_args)
        window = WindowFromMeta(name="window")(input_meta, input_image)
        detections = DetectionLayer(c.DETECTION_MAX_INSTANCES, c.DETECTION_MIN_CONFIDENCE,
                                    c.DETECTION_NMS_THRESHOLD, c.BBOX_STD_DEV,
                                    name="mrcnn_detection")(rpn_rois, probs, bbox, window)
        det_boxes = TrimDetections(name="detection_boxes")(detections)
        mpooled = PyramidROIAlign((c.MASK_POOL_SIZE, c.MASK_POOL_SIZE), name="roi_align_mask")(
            det_boxes, input_image, mrcnn_maps)
        masks = PadDetections(c.DETECTION_MAX_INSTANCES, name="mrcnn_mask_padded")(
            mask_head(mpooled))
        return keras.Model([input_image, input_meta],
                           [detections, probs, bbox, masks, rpn_rois, rpn_class, rpn_bbox],
                           name="mask_rcnn")

    # -------------------------------------------------------------------------------- logs
    def set_log_dir(self, model_path=None):
        """Choose the run folder and epoch counter.

        With ``model_path`` (a checkpoint written by :meth:`train`, in a run folder) training
        continues in that checkpoint's own folder after its epoch.  Otherwise the run folder is
        ``model_dir/<name><YYYYmmddTHHMMSS>`` (Matterport's name plus seconds); it is created
        by :meth:`train` with ``os.mkdir``, and when another run took that name (two runs
        started in the same second) ``_2``, ``_3`` ... is appended, so no run overwrites
        another's checkpoints or config.json.  ``log_dir`` and ``checkpoint_path`` follow.
        """
        self.epoch = 0
        self._log_dir_claimed = False
        name = self.config.NAME.lower()
        self.log_dir = None
        if model_path:
            model_path = os.fspath(model_path)
            m = _CKPT_RE.search(os.path.basename(model_path))
            folder = os.path.dirname(os.path.abspath(model_path))
            if m:
                self.epoch = int(m.group(1))
            if m and _run_key(os.path.basename(folder)):
                self.log_dir = folder  # resume: continue in the checkpoint's own run folder
                self._log_dir_claimed = True
        if self.log_dir is None:
            now = datetime.datetime.now()
            self.log_dir = os.path.join(self.model_dir, f"{name}{now:%Y%m%dT%H%M%S}")
        self.checkpoint_path = os.path.join(self.log_dir,
                                            f"mask_rcnn_{name}_{{epoch:04d}}.weights.h5")

    def _claim_log_dir(self):
        """Create this run's folder (see :meth:`set_log_dir`); raises OSError naming model_dir
        when it cannot be created."""
        from .fileio import check_writable_dir

        if getattr(self, "_log_dir_claimed", False):
            check_writable_dir(self.log_dir, "run folder")
            return self.log_dir
        check_writable_dir(os.path.dirname(os.path.abspath(self.log_dir)), "model_dir")
        base, name = self.log_dir, self.config.NAME.lower()
        for k in range(1, 10000):
            candidate = base if k == 1 else f"{base}_{k}"
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            self.log_dir = candidate
            self.checkpoint_path = os.path.join(candidate,
                                                f"mask_rcnn_{name}_{{epoch:04d}}.weights.h5")
            self._log_dir_claimed = True
            return candidate
        raise OSError(f"no free run folder name {base}_<n> in {self.model_dir}")

    def find_last(self, any_name=False):
        """Path of the newest checkpoint in the newest run folder of this config's NAME that
        holds one (Matterport's ``find_last``); with ``any_name`` of any NAME.  See
        :func:`find_last_checkpoint`. Raises FileNotFoundError when there is none."""
        return find_last_checkpoint(self.model_dir, None if any_name else self.config.NAME)

    # -------------------------------------------------------------------------------- weights
    def load_weights(self, filepath, by_name=False, exclude=None, allow_partial=None):
        """Load Matterport ``.h5`` or native ``.weights.h5`` weights (see mrcnn_nuclei.weights);
        returns its report and, for a checkpoint of ours, continues its epoch numbering.

        allow_partial: whether layers of the model that the file leaves unfilled (random) are
            accepted.  Default None: True in training mode (the report lists them, e.g. COCO
            without the class heads), False in inference mode, where such a load raises
            :class:`mrcnn_nuclei.weights.PartialWeightsError` naming the layers and the likely
            cause before anything is assigned.  Pass True to detect with a partial file anyway.
        """
        from . import weights as W

        if allow_partial is None:
            allow_partial = self.mode == "training"
        report = W.load_weights(self.keras_model, filepath, by_name=by_name, exclude=exclude,
                                allow_partial=allow_partial)
        self.set_log_dir(filepath)
        return report

    def save_weights(self, filepath):
        """Save native weights (+ the config JSON beside them) via mrcnn_nuclei.weights, written
        atomically with the user's umask; OSError (full disk ...) names the file."""
        from . import weights as W

        return W.save_weights(self.keras_model, filepath, config=self.config)

    def get_imagenet_weights(self):
        """Path of the ImageNet ResNet-50 file on disk (never downloads)."""
        from . import weights as W

        return W.find_weights_file("imagenet")

    # -------------------------------------------------------------------------------- training
    def set_trainable(self, layer_regex, keras_model=None, verbose=0):
        """Make layers whose name fully matches ``layer_regex`` trainable, freeze the rest.
        Nested models (rpn_model) are entered; frozen batch norm stays frozen unless TRAIN_BN."""
        model = keras_model or self.keras_model
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                self.set_trainable(layer_regex, layer, verbose)
                continue
            if not layer.weights:
                continue
            trainable = bool(re.fullmatch(layer_regex, layer.name))
            if isinstance(layer, FrozenBatchNorm) and not layer.train_bn:
                trainable = False
            layer.trainable = trainable
            if trainable and verbose > 0:
                print(f"trainable: {layer.name}")

    def compile(self, learning_rate, momentum):
        """Compile the training model with SGD(momentum, weight decay, clipnorm) and warm-up."""
        c = self.config
        lr = learning_rate
        self.lr_schedule = None
        if c.LEARNING_RATE_WARMUP_STEPS or c.LEARNING_RATE_DECAY != "none":
            lr = self.lr_schedule = WarmUp(learning_rate, c.LEARNING_RATE_WARMUP_STEPS)
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=momentum,
                                   weight_decay=c.WEIGHT_DECAY or None,
                                   clipnorm=c.GRADIENT_CLIP_NORM)
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        with self.distribution.scope():
            self.keras_model.compile(optimizer=opt, jit_compile=False)

    def _loader(self, dataset, shuffle, augmentation, workers, use_multiprocessing, steps):
        from .data.loader import TrainingLoader

        return TrainingLoader(dataset, self.config, shuffle=shuffle, augmentation=augmentation,
                              seed=self.config.SEED, workers=workers,
                              use_multiprocessing=use_multiprocessing, steps_per_epoch=steps)

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
              custom_callbacks=None, workers=1, use_multiprocessing=False, verbose=1):
        """Train until epoch ``epochs`` (a total: a staged schedule continues numbering).

        layers: "heads", "3+", "4+", "5+", "all" or a regex over layer names.
        Writes TensorBoard logs and a checkpoint per epoch to ``self.log_dir`` (created here;
        see :meth:`set_log_dir`).
        Returns the keras History.  When ``epochs`` is not above ``self.epoch`` (e.g. resuming
        from a checkpoint of epoch 4 with epochs=4) nothing is trained, no folder is created, a
        warning says which ``epochs`` to pass, and None is returned.
        """
        if self.mode != "training":
            raise ValueError("train() needs a model built with mode='training'")
        regex = LAYER_REGEX.get(layers, layers)
        try:
            re.compile(regex)
        except re.error as err:
            raise ValueError(f"train(layers={layers!r}): not a known preset "
                             f"({', '.join(LAYER_REGEX)}) nor a valid regex: {err}") from None
        if epochs <= self.epoch:
            logger.warning(
                "train(): nothing to train: epochs=%d is a total (Matterport) and the model is "
                "already at epoch %d (loaded from a checkpoint of that epoch); pass epochs=%d or "
                "more to train on", epochs, self.epoch, self.epoch + 1)
            return None
        from .data.checks import check_training_datasets  # every image, before any step
        train_dataset, val_dataset = check_training_datasets(self.config, train_dataset, val_dataset)
        c = self.config
        train_gen = self._loader(train_dataset, True, augmentation, workers, use_multiprocessing,
                                 c.STEPS_PER_EPOCH)
        val_gen = None
        if val_dataset is not None:
            val_gen = self._loader(val_dataset, True, None, workers, use_multiprocessing,
                                   c.VALIDATION_STEPS)
        self._claim_log_dir()
        self.config.save_json(os.path.join(self.log_dir, "config.json"))
        callbacks = [_progress_logger(self.log_dir), AtomicCheckpoint(self.checkpoint_path)]
        callbacks += list(custom_callbacks or [])
        if verbose:
            print(f"\nStarting at epoch {self.epoch}. LR={learning_rate}\n"
                  f"Checkpoint Path: {self.checkpoint_path}")
        self.set_trainable(regex)
        self.compile(learning_rate, self.config.LEARNING_MOMENTUM)
        if c.LEARNING_RATE_DECAY == "cosine":
            decays = [cb for cb in callbacks if isinstance(cb, LearningRateDecay)]
            if not decays:
                decays = [LearningRateDecay(c.LEARNING_RATE_DECAY_FLOOR,
                                            total_steps=(epochs - self.epoch) * c.STEPS_PER_EPOCH)]
                callbacks = decays + callbacks  # first: later callbacks see this step's rate
            for cb in decays:
                cb.schedule = cb.schedule or self.lr_schedule
        history = self.keras_model.fit(
            train_gen, initial_epoch=self.epoch, epochs=epochs,
            steps_per_epoch=self.config.STEPS_PER_EPOCH, callbacks=callbacks,
            validation_data=val_gen,
            validation_steps=self.config.VALIDATION_STEPS if val_gen is not None else None,
            verbose=verbose)
        self.epoch = max(self.epoch, epochs)
        return history

    # -------------------------------------------------------------------------------- inference
    def mold_inputs(self, images):
        """List of images -> (molded [N, H, W, C] float32 list, image_metas [N, META], windows).
        See :func:`mrcnn_nuclei.molding.mold_inputs` (config.RESIZE_SEMANTICS applies)."""
        from .molding import mold_inputs

        return mold_inputs(images, self.config)

    def _run(self, molded, metas, verbose=0, fn="detect"):
        """Run the inference graph on molded images grouped by shape, BATCH_SIZE at a time.
        Returns per image (detections [D, 6], mrcnn_mask [D, h, w, K]). Warns
        (DetectionLimitWarning) for an image whose detections fill DETECTION_MAX_INSTANCES."""
        from .inference.memory import warn_if_full

        if self.mode != "inference":
            raise ValueError("detect() needs a model built with mode='inference'")
        out = [None] * len(molded)
        groups = {}
        for i, m in enumerate(molded):
            groups.setdefault(tuple(m.shape), []).append(i)
        bs = max(1, int(self.config.BATCH_SIZE))
        for shape, idx in groups.items():
            if len(shape) != 3 or shape[2] != self.config.IMAGE_CHANNEL_COUNT:
                raise ValueError(f"molded images must be [H, W, {self.config.IMAGE_CHANNEL_COUNT}]"
                                 f" (IMAGE_CHANNEL_COUNT), got {shape}")
            if shape[0] % 64 or shape[1] % 64:
                raise ValueError(f"molded image size {shape[:2]} must be a multiple of 64; use "
                                 "IMAGE_RESIZE_MODE 'square' or 'pad64'")
            for s in range(0, len(idx), bs):
                chunk = idx[s:s + bs]
                x = np.stack([molded[i] for i in chunk]).astype(np.float32)
                meta = np.stack([metas[i] for i in chunk]).astype(np.float32)
                if verbose:
                    log("molded_images", x)
                    log("image_metas", meta)
                res = self.keras_model.predict_on_batch([x, meta])
                for j, i in enumerate(chunk):
                    out[i] = (np.asarray(res[0][j]), np.asarray(res[3][j]))
                    warn_if_full(self.config, out[i][0], i, shape, fn)
        return out

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window, soft=False):
        """One image's graph outputs -> (rois [N,4] int32, class_ids [N] int32, scores [N]
        float32, masks [H,W,N] bool, soft masks [H,W,N] float32 or None) at the original size.
        See :func:`mrcnn_nuclei.molding.unmold_detections`."""
        from .molding import unmold_detections

        return unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape,
                                 window, self.config, soft=soft)

    def _detect(self, images, soft, verbose):
        from .inference import memory as M
        from .inference.inputs import check_detect_images
        from .inference.tiling import detect_tiled

        c = self.config
        fn = "detect_soft" if soft else "detect"
        images = check_detect_images(images, c.IMAGE_CHANNEL_COUNT, fn)
        if not images:
            return []
        molded, metas, windows = self.mold_inputs(images)
        shapes = [np.shape(image) for image in images]
        over = dict(M.over_limit(c, [m.shape for m in molded], shapes, soft))
        if over and (not c.AUTO_TILE or soft or c.NUM_CLASSES > 2):
            i, need = next(iter(over.items()))
            why = ("" if not c.AUTO_TILE else " (AUTO_TILE does not apply: " +
                   ("detect_soft() has no tiled soft masks)" if soft else
                    "tiled results carry no class ids with NUM_CLASSES > 2)"))
            raise M.DetectMemoryError(M.over_limit_message(c, fn, i, need, molded[i].shape,
                                                           shapes[i]) + why)
        results = [None] * len(images)
        for i, need in over.items():
            logger.warning("%s(): image #%d (%dx%d) needs about %.1f GB, over "
                           "DETECT_MEMORY_LIMIT_GB; running tiled_detect on it (AUTO_TILE = True)",
                           fn, i, shapes[i][0], shapes[i][1], need / 1e9)
            results[i] = detect_tiled(self, images[i])
        todo = [i for i in range(len(images)) if i not in over]
        outs = self._run([molded[i] for i in todo], [metas[i] for i in todo], verbose, fn)
        for i, (det, mask) in zip(todo, outs):
            rois, ids, scores, masks, softs = self.unmold_detections(
                det, mask, shapes[i], molded[i].shape, windows[i], soft=soft)
            r = {"rois": rois, "class_ids": ids, "scores": scores, "masks": masks}
            if soft:
                r["soft_masks"] = softs
            results[i] = r
        return results

    def detect(self, images, verbose=0):
        """Detect nuclei. images: a LIST of [H, W] or [H, W, C] arrays, channels last, any
        dtype/channel count (or one [N, H, W, C] batch array).
        Returns one dict per image: rois [N, 4] int32 (y1, x1, y2, x2), class_ids [N] int32,
        scores [N] float32, masks [H, W, N] bool at the original image size.

        Raises ValueError for one bare image (``detect(image)``: pass ``[image]``) and for a
        channels-first [C, H, W] image (pass ``np.moveaxis(image, 0, -1)``).
        Before running, the memory an image needs is estimated
        (:func:`mrcnn_nuclei.inference.memory.estimate_detect_memory`, full-size mask stack
        H * W * DETECTION_MAX_INSTANCES bytes included). Past ``Config.DETECT_MEMORY_LIMIT_GB``
        (default "auto": half the machine's memory) it raises ``DetectMemoryError`` naming
        :func:`mrcnn_nuclei.inference.tiling.tiled_detect`; with ``Config.AUTO_TILE = True`` it
        runs :func:`~mrcnn_nuclei.inference.tiling.detect_tiled` instead (logged; that result
        also has ``labels`` [H, W] and non-overlapping masks; one-class configs only).
        When an image's detections fill all DETECTION_MAX_INSTANCES slots it warns with
        :class:`mrcnn_nuclei.inference.memory.DetectionLimitWarning`.
        """
        return self._detect(images, soft=False, verbose=verbose)

    def detect_soft(self, images, verbose=0):
        """Like :meth:`detect` (same input checks, memory bound and warnings; no AUTO_TILE),
        plus "soft_masks" [H, W, N] float32 in [0, 1] (mask probabilities pasted at full size,
        before thresholding) for TTA and ensembles."""
        return self._detect(images, soft=True, verbose=verbose)

    def detect_molded(self, molded_images, image_metas, verbose=0):
        """Detect on already molded images [N, H, W, C] (one array or a list of [H, W, C],
        channels last) with their image_metas [N, META] (original size and window read from
        the metas). Same memory bound (always raises past it) and DETECTION_MAX_INSTANCES
        warning as :meth:`detect`."""
        from .data.image_ops import parse_image_meta
        from .inference import memory as M
        from .inference.inputs import check_molded_images

        molded = check_molded_images(molded_images, self.config.IMAGE_CHANNEL_COUNT)
        if not molded:
            return []
        metas = np.asarray(image_metas, np.float32).reshape(len(molded), -1)
        parsed = parse_image_meta(metas)
        origs = [tuple(int(v) for v in o) for o in parsed["original_image_shape"]]
        over = M.over_limit(self.config, [m.shape for m in molded], origs)
        if over:
            i, need = over[0]
            raise M.DetectMemoryError(M.over_limit_message(
                self.config, "detect_molded", i, need, molded[i].shape, origs[i]))
        outs = self._run(molded, metas, verbose, "detect_molded")
        results = []
        for i, (det, mask) in enumerate(outs):
            rois, ids, scores, masks, _ = self.unmold_detections(
                det, mask, origs[i], molded[i].shape, parsed["window"][i])
            results.append({"rois": rois, "class_ids": ids, "scores": scores, "masks": masks})
        return results

    def ancestor(self, tensor, name, checked=None):  # pragma: no cover - Matterport debugging aid
        raise NotImplementedError("ancestor() is a TF1 graph helper; use keras_model.get_layer")

    # -------------------------------------------------------------------------- model folders
    @classmethod
    def from_folder(cls, folder, allow_partial=False, **options):
        """A ready inference model from a model folder (or a weights file with its config):
        :func:`mrcnn_nuclei.modelfolder.load_model`; ``.postprocess`` holds its settings."""
        from .modelfolder import load_model

        return load_model(folder, allow_partial=allow_partial, **options)

    def save_folder(self, folder, postprocess=None):
        """Weights, config and post-processing settings in one folder:
        :func:`mrcnn_nuclei.modelfolder.save_model`. Returns the folder."""
        from .modelfolder import save_model

        return save_model(self, folder, postprocess)
