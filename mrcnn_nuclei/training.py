"""Training pieces of :meth:`MaskRCNN.train`: the training model and its loss dict, which layers
train, the optimizer and learning-rate schedule, the per-epoch callbacks and the batch loader.

* :class:`MaskRCNNTrainingModel`: the functional training graph (built by
  :func:`mrcnn_nuclei.network.build_training_graph`) whose loss is the ``LOSS_WEIGHTS``-weighted
  sum of the dict :func:`mask_rcnn_losses` returns (the five Mask R-CNN losses by name).
* :data:`LAYER_REGEX`, :func:`layer_regex`, :func:`set_trainable`: which layers a stage trains.
* :func:`compile_training_model`: SGD with momentum, decoupled weight decay, gradient clipping and
  a :class:`WarmUp` schedule that :class:`LearningRateDecay` scales by :func:`cosine_factor`.
* :class:`AtomicCheckpoint`, :func:`progress_logger`: per-epoch checkpoint and loss log.
* :func:`make_training_loader`: the default ``loader`` factory of ``MaskRCNN.train``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re

import keras
import numpy as np
from keras import ops

from . import distribute
from .data.image_ops import META_ACTIVE_CLASS_IDS
from .layers import losses as L
from .layers.backbone import FrozenBatchNorm

__all__ = ["LAYER_REGEX", "layer_regex", "set_trainable", "WarmUp", "cosine_factor",
           "step_factor", "decay_callback", "averaged_weights", "assigned_weights",
           "LearningRateDecay", "add_lr_decay", "mask_slots", "mask_rcnn_losses",
           "MaskRCNNTrainingModel", "make_optimizer", "compile_training_model",
           "AtomicCheckpoint", "progress_logger", "make_training_loader"]

logger = logging.getLogger(__name__)

_HEADS = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)|(PREPROC)"
#: Matterport's ``train(layers=...)`` presets: regexes over layer names.
LAYER_REGEX = {
    "heads": _HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + _HEADS,
    "all": ".*",
}


def layer_regex(layers):
    """Regex of ``layers``: a :data:`LAYER_REGEX` preset name or a regex itself.  Raises
    ValueError naming the presets when it is neither."""
    regex = LAYER_REGEX.get(layers, layers)
    try:
        re.compile(regex)
    except (re.error, TypeError) as err:
        raise ValueError(f"train(layers={layers!r}): not a known preset "
                         f"({', '.join(LAYER_REGEX)}) nor a valid regex: {err}") from None
    return regex


def set_trainable(keras_model, layer_regex, verbose=0):
    """Make the layers of ``keras_model`` whose name fully matches ``layer_regex`` trainable and
    freeze the rest.  Nested models (rpn_model) are entered; a :class:`FrozenBatchNorm` stays
    frozen unless built with ``train_bn``."""
    for layer in keras_model.layers:
        if isinstance(layer, keras.Model):
            set_trainable(layer, layer_regex, verbose)
            continue
        if not layer.weights:
            continue
        trainable = bool(re.fullmatch(layer_regex, layer.name))
        if isinstance(layer, FrozenBatchNorm) and not layer.train_bn:
            trainable = False
        layer.trainable = trainable
        if trainable and verbose > 0:
            print(f"trainable: {layer.name}")


# ------------------------------------------------------------------------------- schedule
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


def step_factor(progress, floor, drop_at):
    """Step multiplier: 1 before the fraction ``drop_at`` of the run, ``floor`` from it on."""
    return 1.0 if float(progress) < float(drop_at) else float(floor)


class LearningRateDecay(keras.callbacks.Callback):
    """Sets ``schedule.scale`` (a :class:`WarmUp`) to :func:`cosine_factor` (``kind="cosine"``)
    or :func:`step_factor` (``kind="step"``, the drop at ``drop_at``) of the run's progress
    before every batch.

    progress: callable ``() -> fraction done``; default: batches seen / ``total_steps``.
    ``MaskRCNN.train`` adds one (steps of that call) when ``LEARNING_RATE_DECAY`` is not
    ``"none"`` unless ``custom_callbacks`` holds one already (e.g. a time-budget one); it also
    fills in ``schedule`` when it is None (:func:`add_lr_decay`).
    """

    def __init__(self, floor=0.01, total_steps=None, progress=None, schedule=None,
                 kind="cosine", drop_at=0.8):
        super().__init__()
        if progress is None and not total_steps:
            raise ValueError("LearningRateDecay needs total_steps or a progress callable")
        if kind not in ("cosine", "step"):
            raise ValueError(f"LearningRateDecay: kind must be 'cosine' or 'step', got {kind!r}")
        self.kind = kind
        self.drop_at = float(drop_at)
        self.floor = float(floor)
        self.total_steps = total_steps
        self.progress = progress
        self.schedule = schedule
        self.steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        done = self.progress() if self.progress is not None else self.steps / self.total_steps
        factor = (cosine_factor(done, self.floor) if self.kind == "cosine"
                  else step_factor(done, self.floor, self.drop_at))
        self.schedule.scale.assign(factor)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def add_lr_decay(callbacks, config, total_steps, schedule):
    """``callbacks`` with the decay of ``config.LEARNING_RATE_DECAY`` ("cosine" or "step"): a
    :class:`LearningRateDecay` over ``total_steps`` is put first (later callbacks see this step's
    rate) unless the list holds one already; every one without a schedule gets ``schedule``.
    ``"none"``: ``callbacks`` unchanged."""
    callbacks = list(callbacks)
    if config.LEARNING_RATE_DECAY == "none":
        return callbacks
    decays = [cb for cb in callbacks if isinstance(cb, LearningRateDecay)]
    if not decays:
        decays = [decay_callback(config, total_steps=total_steps)]
        callbacks = decays + callbacks
    for cb in decays:
        cb.schedule = cb.schedule or schedule
    return callbacks


@contextlib.contextmanager
def assigned_weights(keras_model, values):
    """Within the block, ``keras_model``'s trainable weights hold ``values`` (one array or None
    per trainable variable; None leaves that variable alone); its own values are back
    afterwards."""
    variables = keras_model.trainable_variables
    own = [v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in variables]
    try:
        for v, value in zip(variables, values):
            if value is not None:
                v.assign(value)
        yield keras_model
    finally:
        for v, value in zip(variables, own):
            v.assign(value)


@contextlib.contextmanager
def averaged_weights(keras_model):
    """Within the block, ``keras_model``'s trainable weights hold the optimizer's moving average
    (``WEIGHTS_EMA``); the raw weights are back afterwards. No average kept: nothing changes."""
    opt = getattr(keras_model, "optimizer", None)
    averages = getattr(opt, "_model_variables_moving_average", None) if opt is not None else None
    if not getattr(opt, "use_ema", False) or not averages:
        yield keras_model
        return
    with assigned_weights(keras_model, averages):
        yield keras_model


def decay_callback(config, total_steps=None, progress=None):
    """The :class:`LearningRateDecay` of ``config`` (kind, floor and drop point)."""
    return LearningRateDecay(config.LEARNING_RATE_DECAY_FLOOR, total_steps=total_steps,
                             progress=progress, kind=config.LEARNING_RATE_DECAY,
                             drop_at=config.LEARNING_RATE_DROP_AT)


def make_optimizer(config, learning_rate, momentum):
    """``(optimizer, schedule)``: SGD(momentum, decoupled ``WEIGHT_DECAY`` except on norm scales,
    shifts and biases, ``GRADIENT_CLIP_NORM``, a ``WEIGHTS_EMA`` average); the rate is a
    :class:`WarmUp` schedule (returned, else None) when ``LEARNING_RATE_WARMUP_STEPS`` or a ``LEARNING_RATE_DECAY`` is set."""
    c = config
    lr, schedule = learning_rate, None
    if c.LEARNING_RATE_WARMUP_STEPS or c.LEARNING_RATE_DECAY != "none":
        lr = schedule = WarmUp(learning_rate, c.LEARNING_RATE_WARMUP_STEPS)
    opt = keras.optimizers.SGD(learning_rate=lr, momentum=momentum,
                               weight_decay=c.WEIGHT_DECAY or None,
                               clipnorm=c.GRADIENT_CLIP_NORM,
                               use_ema=bool(c.WEIGHTS_EMA),
                               ema_momentum=float(c.WEIGHTS_EMA) or 0.99)
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt, schedule


def compile_training_model(keras_model, config, learning_rate, momentum, distribution=None):
    """Compile ``keras_model`` with :func:`make_optimizer` (inside ``distribution.scope()``
    when given) and set its ``loss_reduction`` to ``config.LOSS_REDUCTION``; returns the
    :class:`WarmUp` schedule or None."""
    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:  # optimizer (and its slots, the WarmUp scale) on the strategy's devices too
        opt, schedule = make_optimizer(config, learning_rate, momentum)
        # JAX: the step is one XLA program (unjitted, every op dispatches and compiles on its
        # own: ~4x slower to start and to run); TensorFlow: tf2xla cannot compile the graph
        keras_model.compile(optimizer=opt, jit_compile=keras.backend.backend() == "jax")
    if isinstance(keras_model, MaskRCNNTrainingModel):
        keras_model.loss_reduction = getattr(config, "LOSS_REDUCTION", "batch")
    return schedule


# ------------------------------------------------------------------------------- model + loss
def mask_slots(config):
    """Number of leading ROI slots that can hold positives: int(TRAIN_ROIS * RATIO)."""
    return max(1, int(config.TRAIN_ROIS_PER_IMAGE * config.ROI_POSITIVE_RATIO))


def mask_rcnn_losses(batch, outputs, slots=None, reduction="batch"):
    """The five Mask R-CNN losses by name (``layers.losses.LOSS_NAMES``), each a scalar.

    batch: the training-batch dict (docs/INTERFACES.md): input_image_meta (its active class ids
    are read through :data:`~mrcnn_nuclei.data.image_ops.META_ACTIVE_CLASS_IDS`), input_rpn_match,
    input_rpn_bbox.  outputs: the training graph's dict (rpn_class_logits, rpn_bbox,
    target_class_ids, target_bbox, target_mask, mrcnn_class_logits, mrcnn_bbox, mrcnn_mask).
    slots: ROI slots the mask branch ran on (default: all of ``mrcnn_mask``).
    reduction: ``Config.LOSS_REDUCTION``, "batch" (Matterport) or "image" (see
    :func:`mrcnn_nuclei.layers.losses.reduce_loss`).
    """
    active = batch["input_image_meta"][:, META_ACTIVE_CLASS_IDS]
    k = slots or outputs["mrcnn_mask"].shape[1]
    r = reduction
    return {
        "rpn_class_loss": L.rpn_class_loss(batch["input_rpn_match"], outputs["rpn_class_logits"],
                                           r),
        "rpn_bbox_loss": L.rpn_bbox_loss(batch["input_rpn_bbox"], batch["input_rpn_match"],
                                         outputs["rpn_bbox"], r),
        "mrcnn_class_loss": L.mrcnn_class_loss(outputs["target_class_ids"],
                                               outputs["mrcnn_class_logits"], active, r),
        "mrcnn_bbox_loss": L.mrcnn_bbox_loss(outputs["target_bbox"], outputs["target_class_ids"],
                                             outputs["mrcnn_bbox"], r),
        "mrcnn_mask_loss": L.mrcnn_mask_loss(outputs["target_mask"][:, :k],
                                             outputs["target_class_ids"][:, :k],
                                             outputs["mrcnn_mask"], r),
    }


class MaskRCNNTrainingModel(keras.Model):
    """Functional training graph whose loss is the LOSS_WEIGHTS-weighted sum of
    :func:`mask_rcnn_losses`; ``fit`` reports each of them and the total as ``loss``.
    ``loss_reduction``: "batch" (default) or "image", set from ``Config.LOSS_REDUCTION`` by
    :func:`compile_training_model`.  Under ``tf.distribute`` each replica's values average to
    the whole-batch ones (:mod:`mrcnn_nuclei.layers.losses`), which the logged means show."""

    def __init__(self, *args, loss_weights=None, mask_slots=None, loss_reduction="batch",
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_weights_ = dict(loss_weights or {})
        self.mask_slots = mask_slots
        self.loss_reduction = loss_reduction
        self._trackers = {n: keras.metrics.Mean(name=n) for n in L.LOSS_NAMES}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """x: the training-batch dict; y_pred: the dict of graph outputs -> total loss."""
        total = 0.0
        reduction = getattr(self, "loss_reduction", "batch")
        for name, value in mask_rcnn_losses(x, y_pred, self.mask_slots, reduction).items():
            self._trackers[name].update_state(value)
            total = total + float(self.loss_weights_.get(name, 1.0)) * value
        # weight decay is applied by the optimizer (decoupled), not added here
        return distribute.scale_loss(total)

    @property
    def metrics(self):
        return list(super().metrics) + list(self._trackers.values())

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras (TensorFlow trainer, under tf.distribute) builds ``fit``'s step from the first
        distributed batch averaged over the replicas, which fails on the bool
        ``input_gt_masks`` ("AddN ... bool"); build from the first replica's share instead (only
        shapes and dtypes matter there)."""
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and strategy is not None:
            import tensorflow as tf

            def first_replica(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return strategy.experimental_local_results(value)[0]
                return value

            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(first_replica, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


# ------------------------------------------------------------------------------- callbacks
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


def progress_logger(log_dir):
    """TensorBoard callback writing to ``log_dir``; a CSV log (``training_log.csv``) instead
    when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        logger.info("tensorboard is not installed; logging losses to %s/training_log.csv",
                    log_dir)
        return keras.callbacks.CSVLogger(os.path.join(log_dir, "training_log.csv"), append=True)
    return keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False)


# ------------------------------------------------------------------------------- data
def make_training_loader(dataset, config, *, shuffle=True, augmentation=None, workers=1,
                         use_multiprocessing=False, steps_per_epoch=None, cache=False):
    """The default ``loader`` factory of :meth:`MaskRCNN.train`: a
    :class:`mrcnn_nuclei.data.loader.TrainingLoader` seeded with ``config.SEED``.  In
    multi-process data-parallel training (JAX) it loads this process's slice of every global
    batch (:func:`mrcnn_nuclei.distribute.process_shard`; SEED must then be set).

    ``train(loader=...)`` takes any callable of this signature (``dataset, config`` and these
    keywords) returning a ``keras.utils.PyDataset`` of training-batch dicts; e.g. one that adds
    ``cache=True`` (decoded images and bit-packed masks kept in memory, thread workers only).
    """
    from .data.loader import TrainingLoader

    shard = distribute.process_shard(config)
    if shard[1] > 1 and config.SEED is None:
        raise ValueError(f"{type(config).__name__}.SEED is None: multi-process data-parallel "
                         "training needs the same integer SEED in every process (each process "
                         "loads its slice of the same shuffled global batches)")
    return TrainingLoader(dataset, config, shuffle=shuffle, augmentation=augmentation,
                          seed=config.SEED, workers=workers,
                          use_multiprocessing=use_multiprocessing,
                          steps_per_epoch=steps_per_epoch, cache=cache, shard=shard)
