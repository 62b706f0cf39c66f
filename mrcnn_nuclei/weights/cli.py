"""The ``--weights`` argument of the command lines: ``coco | imagenet | last | none | PATH``
resolved to a checked file, and loaded into a MaskRCNN (COCO without the class-specific heads)."""

from __future__ import annotations

import os

from .files import check_weights_file
from .registry import find_weights_file
from .report import CLASS_SPECIFIC_LAYERS

__all__ = ["WEIGHT_CHOICES", "resolve_weights_arg", "load_start_weights"]


WEIGHT_CHOICES = ("coco", "imagenet", "last", "none")


def resolve_weights_arg(spec, model=None, model_dir=None, name=None):
    """Path for a ``--weights`` value: coco | imagenet | last | none | PATH (None for "none").

    ``last``: the newest checkpoint (``mrcnn_nuclei.runs.find_last_checkpoint``) of ``model``
    (a MaskRCNN: its model_dir and config NAME) or, without a model, under ``model_dir`` of
    config ``name`` (None: runs of any NAME).  The file found is checked cheaply
    (:func:`check_weights_file`), so a missing, truncated or foreign file fails here, before a
    model is built.  Raises FileNotFoundError / ValueError naming the path and the accepted values.
    """
    key = str(spec).lower()
    if key == "none":
        return None
    if key in ("coco", "imagenet"):
        path = find_weights_file(key)
    elif key == "last":
        if model is not None:
            path = model.find_last()
        elif model_dir is not None:
            from ..runs import find_last_checkpoint

            path = find_last_checkpoint(model_dir, name)
        else:
            raise ValueError("--weights=last needs the model or model_dir (to search for runs)")
    else:
        path = os.path.expanduser(os.fspath(spec))
        if not os.path.exists(path):
            raise FileNotFoundError(f"--weights={spec}: no such file {path}; pass an existing "
                                    f"weights file or one of {', '.join(WEIGHT_CHOICES)}")
    if os.path.exists(path):  # (test doubles may name files that are not there)
        check_weights_file(path)
    return path


def load_start_weights(model, spec, allow_partial=None):
    """Load the weights a ``--weights`` value names into a MaskRCNN; returns (path, report).

    coco: Matterport's COCO file by name with :data:`CLASS_SPECIFIC_LAYERS` excluded (the heads
    of another class count); imagenet, last and PATH: by name; none: nothing, (None, None).
    allow_partial: see ``MaskRCNN.load_weights`` (default: allowed when training, an error naming
    the unfilled layers in inference mode).
    """
    path = resolve_weights_arg(spec, model)
    if path is None:
        return None, None
    exclude = list(CLASS_SPECIFIC_LAYERS) if str(spec).lower() == "coco" else None
    return path, model.load_weights(path, by_name=True, exclude=exclude,
                                    allow_partial=allow_partial)
