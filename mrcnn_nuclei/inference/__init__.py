"""Inference add-ons: instance merging, test-time augmentation, ensembles, tiled inference."""

from .ensemble import Ensemble
from .merge import boxes_from_masks, mask_iou_matrix, merge_instances
from .tiling import tile_grid, tiled_detect
from .tta import TRANSFORMS, apply_transform, invert_run, tta_detect

__all__ = ["merge_instances", "mask_iou_matrix", "boxes_from_masks", "tta_detect", "TRANSFORMS",
           "apply_transform", "invert_run", "Ensemble", "tiled_detect", "tile_grid"]
