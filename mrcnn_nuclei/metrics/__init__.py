"""Instance-segmentation metrics for nuclei (label images in, floats out).

One module per job; every public name is re-exported here, so ``from mrcnn_nuclei.metrics
import dsb_score`` (and Matterport's ``mrcnn_nuclei.utils.compute_ap``) keep working:

* :mod:`.labels`: input checks, stack <-> label conversion with the package's one overlap rule
  (:func:`masks_to_label`: the higher score, else the earlier channel, wins), run-length encoding.
* :mod:`.matching`: the pixel contingency table of an image pair and unique matching.
* :mod:`.instance`: per-image DSB2018 score, AJI, AJI+, PQ, Dice, matched IoU, F1.
* :mod:`.coco`: COCO mask AP (pycocotools or the NumPy twin).
* :mod:`.matterport`: Matterport's compute_matches / compute_ap / compute_recall.
* :mod:`.pannuke`: PanNuke bPQ and mPQ.

Dependencies point one way (labels <- matching <- instance <- pannuke, coco; matterport needs
only :mod:`mrcnn_nuclei.boxes`); nothing here imports :mod:`mrcnn_nuclei.postprocess`.
"""

from .coco import coco_mask_ap
from .instance import (DSB_THRESHOLDS, aji, aji_plus, dice, dsb_score, dsb_score_dataset,
                       evaluate_all, f1_detection, matched_mean_iou, panoptic_quality)
from .labels import (check_stack, instance_rles, label_rle_counts, label_runs, label_to_masks,
                     masks_to_label, relabel_sequential, to_label)
from .matching import Contingency, contingency, match_instances
from .matterport import (compute_ap, compute_ap_range, compute_matches, compute_overlaps_masks,
                         compute_recall)
from .pannuke import pannuke_bpq, pannuke_mpq, tissue_means

__all__ = [
    "to_label", "relabel_sequential", "check_stack", "masks_to_label", "label_to_masks",
    "label_runs", "label_rle_counts", "instance_rles", "Contingency", "contingency",
    "match_instances", "dsb_score", "dsb_score_dataset", "DSB_THRESHOLDS",
    "aji", "aji_plus", "panoptic_quality", "dice", "matched_mean_iou", "f1_detection",
    "evaluate_all", "coco_mask_ap",
    "compute_overlaps_masks", "compute_matches", "compute_ap", "compute_ap_range",
    "compute_recall", "pannuke_bpq", "pannuke_mpq", "tissue_means",
]
