"""From-scratch CPU recipe for DSB2018 nuclei and a wall-clock-budgeted train/evaluate loop.

:class:`DSBScratchConfig` is the recipe measured on a 2-core CPU (see samples/nucleus/README.md
for the ablations): ResNet-18 with GroupNorm (no pretrained weights exist here, so frozen batch
norm is not an option), a 128-channel FPN, light heads, anchors matched to nucleus sizes, 256 px
crops of images upsampled x2 (as Matterport's nucleus sample), SGD with warm-up.

:func:`train_budgeted` trains a :class:`~mrcnn_nuclei.model.MaskRCNN` for ``minutes`` of training
wall clock (one ``MaskRCNN.train`` call, stopped by :class:`BudgetCallback`), pausing the clock
to evaluate on held-out images at fixed training minutes with :func:`evaluate_model` (DSB score,
AP, AP50, AJI, PQ).  The benchmark ``benchmarks/train_dsb.py`` and the CI test share this code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import keras
import numpy as np

from .config import NucleusConfig, inference_config
from .datasets.dsb import read_image_groups  # noqa: F401  (re-exported: the holdout split's input)

__all__ = ["DSBScratchConfig", "inference_twin", "evaluate_model", "BudgetCallback",
           "RawWeightsAtStop", "KeepLastCheckpoint", "train_budgeted", "config_with", "format_curve", "cached_loader",
           "holdout_ids", "read_image_groups", "copy_weights"]


class DSBScratchConfig(NucleusConfig):
    """CPU from-scratch recipe for DSB2018 (ResNet-18 + GN, 256 px crops at x2 scale)."""

    NAME = "dsb_scratch"
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 50
    VALIDATION_STEPS = 1
    BACKBONE = "resnet18"
    NORM = "gn"
    GN_GROUPS = 16
    TRAIN_BN = True
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 256
    IMAGE_MAX_DIM = 256
    IMAGE_MIN_SCALE = 2.0
    TOP_DOWN_PYRAMID_SIZE = 128
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 128
    PRE_NMS_LIMIT = 3000
    POST_NMS_ROIS_TRAINING = 512
    POST_NMS_ROIS_INFERENCE = 1000
    RPN_NMS_THRESHOLD = 0.7
    TRAIN_ROIS_PER_IMAGE = 128
    MAX_GT_INSTANCES = 128
    DETECTION_MAX_INSTANCES = 400
    DETECTION_MIN_CONFIDENCE = 0.5
    MINI_MASK_SHAPE = (28, 28)
    # the 2026-12-04 recipe (samples/nucleus/README.md, "Accuracy work"): a mask head half as wide
    # (twice the steps per CPU budget), bright-background images inverted, the weights averaged
    MASK_HEAD_CHANNELS = 128
    IMAGE_INVERT_BRIGHT = 127
    WEIGHTS_EMA = 0.99
    LEARNING_RATE = 0.01
    LEARNING_RATE_WARMUP_STEPS = 100
    SEED = 0
    # the recipe's curve (samples/nucleus/README.md) was measured with these resize semantics
    # (x2 crops without Matterport's dark outer pixel ring; Config.RESIZE_SEMANTICS)
    RESIZE_SEMANTICS = "project"


def config_with(base, **overrides):
    """An instance of a subclass of ``base`` with attribute ``overrides`` (upper-case names)."""
    bad = [k for k in overrides if not k.isupper() or not hasattr(base, k)]
    if bad:
        raise ValueError(f"config_with: unknown Config attribute(s) {bad} for {base.__name__}; "
                         "use upper-case names of mrcnn_nuclei.config.Config")
    return type(base.__name__, (base,), dict(overrides))()


def holdout_ids(ids, n, groups=None, seed=0):
    """Split ``ids`` into ``(train, held_out)`` with ``n`` ids held out for tuning, stratified by
    ``groups`` (``{id: group}``; ids without a group form one group ``"?"``) so the held-out set
    has the group mix of ``ids`` (largest-remainder rounding of each group's share).

    Deterministic for a ``seed`` and independent of the order of ``ids``. Both lists are sorted.
    """
    ids = sorted(set(ids))
    n = int(n)
    if not 0 < n < len(ids):
        raise ValueError(f"holdout_ids: n must be between 1 and {len(ids) - 1}, got {n}")
    groups = groups or {}
    by_group = {}
    for i in ids:
        by_group.setdefault(groups.get(i, "?"), []).append(i)
    names = sorted(by_group)
    shares = np.array([len(by_group[g]) * n / len(ids) for g in names])
    take = np.floor(shares).astype(int)
    order = np.argsort(-(shares - take), kind="stable")
    take[order[: n - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    held = []
    for g, k in zip(names, take):
        members = by_group[g]
        held.extend(members[j] for j in rng.permutation(len(members))[:k])
    held = sorted(held)
    chosen = set(held)
    return [i for i in ids if i not in chosen], held


def inference_twin(config):
    """Inference config matching a training ``config``: one image per batch, images padded to a
    multiple of 64 at the training scale (``IMAGE_MIN_SCALE``, never below 1); the package's
    one derivation (:func:`mrcnn_nuclei.config.inference_config`) with any resize mode made
    ``pad64`` and no minimum side."""
    return inference_config(config, IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64,
                            IMAGE_MAX_DIM=max(64, int(config.IMAGE_MAX_DIM)))


def evaluate_model(model, dataset, image_ids=None, min_size=0):
    """Detect and score held-out images (:func:`mrcnn_nuclei.evaluation.evaluate_dataset`, no
    files, NumPy COCO AP).

    model: a MaskRCNN in inference mode. dataset: a prepared Dataset with masks.
    image_ids: internal ids (default all). Returns a dict: ``dsb`` (Kaggle score, mean over
    images), ``aji``, ``pq`` (means), ``AP``/``AP50`` (COCO mask AP over the set), ``n_pred``,
    ``n_gt`` (totals), ``seconds``.
    """
    from .evaluation import evaluate_dataset

    ids = list(dataset.image_ids if image_ids is None else image_ids)
    if not ids:
        raise ValueError("evaluate_model: no image ids to evaluate")
    t0 = time.perf_counter()
    s = evaluate_dataset(model, dataset, ids, min_size=min_size, coco_backend="numpy",
                         pannuke=False, verbose=0)
    out = {k: s["means"][k] for k in ("dsb", "aji", "pq")}
    out.update(AP=float(s["coco"]["AP"]), AP50=float(s["coco"]["AP50"]),
               n_pred=s["totals"]["n_pred"], n_gt=s["totals"]["n_gt"],
               seconds=round(time.perf_counter() - t0, 1))
    return out


def copy_weights(train_model, infer_model, average=True):
    """Copy the training model's weights into the inference model (by layer name, strict); with
    ``WEIGHTS_EMA`` the optimizer's moving average is copied (the raw weights stay in training)
    unless ``average=False``."""
    from . import weights as W
    from .training import averaged_weights

    keep = averaged_weights(train_model.keras_model) if average else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, keep:
        path = W.save_weights(train_model.keras_model, os.path.join(tmp, "w.weights.h5"))
        W.load_weights(infer_model.keras_model, path, by_name=True)


class RawWeightsAtStop(keras.callbacks.Callback):
    """Keeps the trainable weights as they are when training stops (``values``, NumPy), before
    Keras' ``fit`` writes the optimizer's moving average (``WEIGHTS_EMA``) into the model: the
    last step's own weights, for comparing them with their average."""

    def __init__(self, enabled=True):
        super().__init__()
        self.enabled = bool(enabled)
        self.values = None

    def on_epoch_end(self, epoch, logs=None):
        if self.enabled and self.model.stop_training:
            self.values = [np.array(v.numpy(), copy=True) for v in self.model.trainable_variables]


class BudgetCallback(keras.callbacks.Callback):
    """Stops training after ``minutes`` of training wall clock (or ``max_steps`` steps, if
    given, whichever comes first) and evaluates at ``eval_at`` (training minutes, ascending) and at
    the end; evaluation time is excluded from the budget.

    evaluate: callable ``() -> dict`` run at each point. ``curve`` collects one dict per point
    (``minutes``, ``steps``, ``loss`` = mean loss over the steps since the previous point, and the
    evaluation dict plus ``eval_seconds``); ``epoch_losses`` the mean loss of each epoch.
    clock: callable ``() -> seconds`` read for every time measurement (default
    ``time.perf_counter``; tests pass a fake clock).
    """

    def __init__(self, minutes, eval_at=(), evaluate=None, max_steps=None, verbose=1,
                 clock=time.perf_counter):
        super().__init__()
        self.clock = clock
        self.max_steps = None if max_steps is None else int(max_steps)
        self.budget = float(minutes) * 60.0
        self.eval_at = sorted(float(m) * 60.0 for m in eval_at if 0 < float(m) * 60 <= self.budget)
        if not self.eval_at or self.eval_at[-1] < self.budget:
            self.eval_at.append(self.budget)
        self.evaluate = evaluate
        self.verbose = verbose
        self.curve = []
        self.epoch_losses = []
        self.steps = 0
        self.trained = 0.0
        self._losses = []
        self._t = None
        self.eval_seconds = 0.0

    def fraction(self):
        """Share of the budget used so far (training time, or steps when ``max_steps`` is set,
        whichever is further along), for a budget-long learning-rate decay."""
        done = self.trained / self.budget if self.budget > 0 else 1.0
        if self.max_steps:
            done = max(done, self.steps / self.max_steps)
        return min(done, 1.0)

    def on_train_begin(self, logs=None):
        self._t = self.clock()

    def on_train_batch_begin(self, batch, logs=None):
        if self._t is None:
            self._t = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        self.trained += now - self._t
        self._t = now
        self.steps += 1
        if logs and "loss" in logs:
            self._losses.append(float(logs["loss"]))
        last = self.max_steps is not None and self.steps >= self.max_steps
        if last:
            self.eval_at = [self.trained]
        if self.eval_at and self.trained >= self.eval_at[0]:
            while self.eval_at and self.trained >= self.eval_at[0]:
                self.eval_at.pop(0)
            self._point()
            if not self.eval_at:
                self.model.stop_training = True
        self._t = self.clock()  # time spent evaluating is not training time

    def on_epoch_end(self, epoch, logs=None):
        if logs and "loss" in logs:
            self.epoch_losses.append(float(logs["loss"]))

    def _point(self):
        row = {"minutes": round(self.trained / 60.0, 3), "steps": self.steps,
               "loss": float(np.mean(self._losses)) if self._losses else float("nan")}
        self._losses = []
        if self.evaluate is not None:
            t0 = self.clock()
            row.update(self.evaluate())
            row["eval_seconds"] = round(self.clock() - t0, 1)
            self.eval_seconds += row["eval_seconds"]
        self.curve.append(row)
        if self.verbose:
            print("\n" + format_curve([row], header=not self.curve[:-1]), flush=True)


class KeepLastCheckpoint(keras.callbacks.Callback):
    """Deletes every per-epoch checkpoint of ``mrcnn_model``'s run folder but the newest (a
    budgeted run has many short epochs)."""

    def __init__(self, mrcnn_model):
        super().__init__()
        self.mrcnn_model = mrcnn_model

    def on_epoch_end(self, epoch, logs=None):
        folder = self.mrcnn_model.log_dir
        names = sorted(n for n in os.listdir(folder)
                       if n.startswith("mask_rcnn_") and n.endswith(".weights.h5"))
        for name in names[:-1]:
            os.remove(os.path.join(folder, name))


def format_curve(curve, header=True):
    """Text table of budget points (minutes, steps, loss, dsb, AP, AP50, aji, pq, eval s)."""
    cols = [("minutes", "{:7.1f}"), ("steps", "{:6d}"), ("loss", "{:7.3f}"), ("dsb", "{:6.3f}"),
            ("AP", "{:6.3f}"), ("AP50", "{:6.3f}"), ("aji", "{:6.3f}"), ("pq", "{:6.3f}"),
            ("n_pred", "{:6d}"), ("eval_seconds", "{:6.0f}")]
    lines = []
    if header:
        lines.append(" ".join(f"{name[:7]:>7}" for name, _ in cols))
    for row in curve:
        cells = []
        for name, fmt in cols:
            v = row.get(name)
            cells.append(f"{'-':>7}" if v is None else f"{fmt.format(v):>7}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def cached_loader(dataset, config, **options):
    """``MaskRCNN.train(loader=...)`` factory whose training loader keeps decoded images and
    bit-packed masks in memory (DSB images hold up to hundreds of mask PNGs; decoding them
    dominates a CPU step); thread workers only."""
    from .training import make_training_loader

    options["use_multiprocessing"] = False
    return make_training_loader(dataset, config, cache=True, **options)


def train_budgeted(config, train_dataset, val_dataset, minutes, model_dir, eval_at=(),
                   val_ids=None, augmentation=None, workers=2, eval_untrained=False,
                   max_steps=None, final_val_ids=None, verbose=1):
    """Train ``config`` from random init for ``minutes`` of training time, evaluating on
    ``val_dataset`` (ids ``val_ids``, default all) at the training minutes ``eval_at`` and at the
    end. Returns ``(model, curve)``: the training MaskRCNN and a list of dicts (see
    :class:`BudgetCallback`); with ``eval_untrained`` the first entry is the untrained model.
    max_steps: also stop after that many steps (repeatable short runs, tests).
    final_val_ids: also score these ids after training (the last curve entry gets
    ``final`` = that evaluation dict); e.g. a small ``val_ids`` for the curve and all ids at the
    end. With ``WEIGHTS_EMA`` the curve scores the averaged weights, and the last entry also gets
    ``raw_weights``: the same ``val_ids`` scored with the raw (last-step) weights, an ablation of
    the average at an equal step count. The training loader caches decoded images and masks
    (thread workers only)."""
    from .model import MaskRCNN
    from .training import assigned_weights, decay_callback

    if config.SEED is not None:
        keras.utils.set_random_seed(int(config.SEED))
    model = MaskRCNN("training", config, model_dir=model_dir)
    infer = MaskRCNN("inference", inference_twin(config), model_dir=model_dir)

    def evaluate(ids=val_ids):
        copy_weights(model, infer)
        return evaluate_model(infer, val_dataset, ids)

    curve = []
    if eval_untrained:
        t0 = time.perf_counter()
        row = {"minutes": 0.0, "steps": 0, "loss": float("nan"), **evaluate()}
        row["eval_seconds"] = round(time.perf_counter() - t0, 1)
        curve.append(row)
        if verbose:
            print(format_curve([row]), flush=True)
    budget = BudgetCallback(minutes, eval_at, evaluate, max_steps=max_steps, verbose=verbose)
    raw = RawWeightsAtStop(enabled=bool(config.WEIGHTS_EMA))
    callbacks = [budget, KeepLastCheckpoint(model), raw]
    if config.LEARNING_RATE_DECAY != "none":  # over the budget, not over the 100000 epochs
        callbacks.append(decay_callback(config, progress=budget.fraction))
    model.train(train_dataset, None, config.LEARNING_RATE, epochs=100000, layers="all",
                augmentation=augmentation, custom_callbacks=callbacks,
                workers=workers, loader=cached_loader,
                verbose=0 if verbose < 2 else 2)
    curve.extend(budget.curve)
    if raw.values is not None and curve:
        t0 = time.perf_counter()
        with assigned_weights(model.keras_model, raw.values):
            copy_weights(model, infer, average=False)
        curve[-1]["raw_weights"] = evaluate_model(infer, val_dataset, val_ids)
        curve[-1]["raw_weights"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if final_val_ids is not None and curve:
        t0 = time.perf_counter()
        curve[-1]["final"] = evaluate(list(final_val_ids))
        curve[-1]["final"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    model.epoch_losses = budget.epoch_losses
    return model, curve
