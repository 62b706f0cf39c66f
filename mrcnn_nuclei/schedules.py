"""Named staged training schedules (``samples/nucleus/train.py --schedule``).

A schedule is a list of :class:`Stage` ``(layers, epochs_total, lr_factor)``.  ``epochs_total`` is
the epoch number a stage trains *up to*, counted from the start of training as Matterport does
(``model.train(..., epochs=40)`` after 20 epochs of heads trains 20 more), so a resumed run simply
skips the stages it has completed.  The learning rate of a stage is ``base_lr * lr_factor``.

Named schedules (epochs per stage are defaults; pass ``epochs=[...]`` to change them):

* ``"matterport"`` - Matterport's nucleus sample: heads to 20, then all layers to 40.
* ``"three-stage"`` - Matterport's COCO sample: heads to 40, ResNet stage 4 and up to 120, all
  layers to 160 at a tenth of the rate.
* ``"mrcnn-plus"`` - four stages in the spirit of Mask R-CNN+: heads (the ``PREPROC`` 1x1 input
  projection included) at twice the rate, all layers at the rate, ResNet stage 5 and up at half,
  heads alone at a tenth.
* ``"scratch"`` - one stage, all layers to 20: for training from random weights
  (``--weights=none``), where a heads-only stage on an untrained backbone buys nothing.
"""

from __future__ import annotations

import dataclasses
import logging

__all__ = ["Stage", "SCHEDULES", "HEADS_WITH_PREPROC", "build_schedule", "parse_epochs",
           "run_schedule", "describe"]

logger = logging.getLogger("mrcnn_nuclei.schedules")

#: Head layers plus the Mask R-CNN+ input projection ``PREPROC`` (a regex for model.train).
HEADS_WITH_PREPROC = r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)|(PREPROC)"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: ``model.train(layers=layers, epochs=epochs_total,
    learning_rate=base_lr * lr_factor)``."""

    layers: str
    epochs_total: int
    lr_factor: float = 1.0


SCHEDULES = {
    "matterport": (Stage("heads", 20, 1.0), Stage("all", 40, 1.0)),
    "three-stage": (Stage("heads", 40, 1.0), Stage("4+", 120, 1.0), Stage("all", 160, 0.1)),
    "mrcnn-plus": (Stage(HEADS_WITH_PREPROC, 10, 2.0), Stage("all", 40, 1.0),
                   Stage("5+", 60, 0.5), Stage("heads", 70, 0.1)),
    "scratch": (Stage("all", 20, 1.0),),
}


def parse_epochs(text):
    """``"20,40"`` -> ``[20, 40]``; raises ValueError naming ``--epochs`` on bad input."""
    if isinstance(text, (list, tuple)):
        return [int(t) for t in text]
    try:
        return [int(t) for t in str(text).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ValueError(f"--epochs={text!r}: expected comma-separated whole numbers, e.g. "
                         "--epochs=20,40 (the epoch each stage trains up to)") from None


def build_schedule(name, epochs=None, lr=None):
    """The named schedule as a list of :class:`Stage`.

    name: one of :data:`SCHEDULES`.
    epochs: optional per-stage totals (list or ``"20,40"``), strictly increasing, one per stage.
    lr: optional per-stage learning-rate factors (list, one per stage) replacing the defaults.
    Raises ValueError naming the argument and the fix.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    stages = list(SCHEDULES[name])
    n = len(stages)
    if epochs is not None:
        epochs = parse_epochs(epochs)
        if len(epochs) != n:
            raise ValueError(f"epochs={epochs}: schedule {name!r} has {n} stages; give {n} "
                             f"epoch totals, e.g. --epochs="
                             f"{','.join(str(s.epochs_total) for s in stages)}")
        if epochs[0] < 1 or any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise ValueError(f"epochs={epochs}: each stage's total must be at least 1 and larger "
                             "than the previous one (totals count from the start, Matterport-style:"
                             " 20,40 = 20 epochs of heads then 20 of all layers)")
        stages = [dataclasses.replace(s, epochs_total=e) for s, e in zip(stages, epochs)]
    if lr is not None:
        factors = [float(f) for f in (lr if isinstance(lr, (list, tuple)) else [lr] * n)]
        if len(factors) != n or min(factors) <= 0:
            raise ValueError(f"lr={lr}: give {n} positive learning-rate factors for schedule "
                             f"{name!r} (one per stage)")
        stages = [dataclasses.replace(s, lr_factor=f) for s, f in zip(stages, factors)]
    return stages


def describe(schedule, base_lr):
    """One line per stage: ``epochs a-b  layers=...  lr=...``."""
    lines, start = [], 0
    for s in schedule:
        lines.append(f"epochs {start + 1:>3}-{s.epochs_total:<3} layers={s.layers}  "
                     f"lr={base_lr * s.lr_factor:g}")
        start = s.epochs_total
    return "\n".join(lines)


def run_schedule(model, train_dataset, val_dataset, schedule, base_lr, augmentation=None,
                 **train_kwargs):
    """Run each stage with ``model.train``; returns the stages actually run.

    model: a training-mode MaskRCNN (or anything with ``.epoch`` and Matterport's ``train``).
    Stages whose ``epochs_total`` the model has already reached (``model.epoch``, set when
    resuming from a checkpoint) are skipped; a partly done stage continues where it stopped.
    Extra keyword arguments (``custom_callbacks``, ``workers`` ...) go to every ``train`` call.
    """
    if not schedule:
        raise ValueError("run_schedule: the schedule is empty")
    if base_lr <= 0:
        raise ValueError(f"run_schedule: base_lr={base_lr} must be positive")
    ran = []
    for i, stage in enumerate(schedule):
        done = int(getattr(model, "epoch", 0) or 0)
        if done >= stage.epochs_total:
            logger.info("stage %d (%s to epoch %d) already done (model at epoch %d): skipped",
                        i + 1, stage.layers, stage.epochs_total, done)
            continue
        lr = base_lr * stage.lr_factor
        logger.info("stage %d: layers=%s epochs %d-%d lr=%g", i + 1, stage.layers, done + 1,
                    stage.epochs_total, lr)
        model.train(train_dataset, val_dataset, learning_rate=lr, epochs=stage.epochs_total,
                    layers=stage.layers, augmentation=augmentation, **train_kwargs)
        model.epoch = max(int(getattr(model, "epoch", 0) or 0), stage.epochs_total)
        ran.append(stage)
    return ran
