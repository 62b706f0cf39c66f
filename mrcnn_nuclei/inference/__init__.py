"""Inference add-ons: instance merging, test-time augmentation, ensembles, tiled inference."""

from .merge import boxes_from_masks, mask_iou_matrix, merge_instances

__all__ = ["merge_instances", "mask_iou_matrix", "boxes_from_masks"]
