"""The one entry point that loads any weights file into a Keras model: validate the whole file
against the model first (legacy or native reader), then assign, then report."""

from __future__ import annotations

import logging
import os

from .files import _damaged_message, file_kind
from .legacy import _plan_legacy
from .native import _load_native_whole, _plan_native
from .report import PartialWeightsError, _model_layers, _normalise_exclude, _partial_message

__all__ = ["load_weights"]

logger = logging.getLogger("mrcnn_nuclei.weights")


def load_weights(keras_model, path, by_name=False, exclude=None, allow_partial=True):
    """Load ``path`` into ``keras_model`` and return a :class:`LoadReport` (also logged).

    keras_model: a built keras.Model (layers named as Matterport's; may hold a nested
        ``rpn_model``).
    path: Matterport/Keras-1 ``.h5`` or Keras 3 ``.weights.h5``.
    by_name: match layers by name and tolerate layers missing on either side (reported).  With
        False a legacy file must hold every model layer that has weights.
    exclude: layer names to leave untouched (e.g. :data:`CLASS_SPECIFIC_LAYERS`).
    allow_partial: False raises :class:`PartialWeightsError` (nothing assigned) when the load
        would leave any model layer with weights unfilled (``report.unfilled``); True (default
        here; ``MaskRCNN.load_weights`` passes False in inference mode) loads and reports them.
    Raises FileNotFoundError (no file), ValueError (unknown layout, truncated file, shape
    mismatch, missing layers), PartialWeightsError.
    """
    path = os.fspath(path)
    kind = file_kind(path)
    excl = _normalise_exclude(exclude)
    try:
        if kind == "native" and not by_name and not excl:
            report = _load_native_whole(keras_model, path)
            plan = None
        elif kind == "legacy":
            plan, report = _plan_legacy(keras_model, path, by_name, excl)
        else:
            plan, report = _plan_native(keras_model, path, excl)
    except OSError as err:  # h5py read errors on a damaged file
        raise ValueError(_damaged_message(path, err)) from None
    leaves, _ = _model_layers(keras_model)
    loaded = set(report.loaded)
    report.unfilled = [n for n, l in leaves.items() if l.weights and n not in loaded]
    if report.unfilled and not allow_partial:
        raise PartialWeightsError(_partial_message(path, report.unfilled, report), report)
    for variable, array in plan or []:
        variable.assign(array)
    unknown = sorted(excl - set(leaves) - set(report.skipped) - set(report.excluded))
    if unknown:
        logger.warning("exclude names %s match no layer of the model or the file", unknown)
    logger.info("%s", report)
    return report
