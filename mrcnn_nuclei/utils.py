"""Matterport-compatible names (``mrcnn.utils``) re-exported from the modular core.

``from mrcnn_nuclei import utils`` then ``utils.Dataset``, ``utils.resize_image``,
``utils.compute_ap``, ... as with Matterport. The names are imported from their home module on
first access (module-level ``__getattr__``), so importing this module stays cheap and does not
fail while an optional piece is missing.
"""

from __future__ import annotations

import importlib

from .data.dataset import Dataset

_HOMES = {
    "mrcnn_nuclei.data.image_ops": (
        "resize_image", "resize_mask", "extract_bboxes", "minimize_mask", "expand_mask",
        "unmold_mask", "compose_image_meta", "parse_image_meta", "mold_image", "unmold_image",
        "norm_boxes", "denorm_boxes"),
    "mrcnn_nuclei.boxes": (
        "compute_iou", "compute_overlaps", "compute_overlaps_masks", "box_refinement",
        "apply_box_deltas", "generate_anchors", "generate_pyramid_anchors"),
    "mrcnn_nuclei.metrics": ("compute_ap", "compute_ap_range", "compute_matches", "compute_recall"),
    "mrcnn_nuclei.data.convert": ("to_uint8",),
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}

__all__ = ["Dataset", *_WHERE]


def __getattr__(name):
    """Import ``name`` from its home module on first access and cache it here."""
    module_name = _WHERE.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AttributeError(f"mrcnn_nuclei.utils.{name} lives in {module_name}, which cannot be "
                             f"imported: {exc}") from exc
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"mrcnn_nuclei.utils.{name}: {module_name} does not define "
                             f"{name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
