"""Matterport's evaluation API (``mrcnn.utils``): greedy mask matching, VOC-style AP, box recall.
"""

from __future__ import annotations

import numpy as np

from ..boxes import compute_overlaps, compute_overlaps_masks

__all__ = ["compute_overlaps_masks", "compute_matches", "compute_ap", "compute_ap_range",
           "compute_recall"]


def _trim(boxes):
    boxes = np.asarray(boxes)
    keep = np.any(boxes != 0, axis=1) if boxes.size else np.zeros(0, bool)
    return keep


def compute_matches(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
                    pred_masks, iou_threshold=0.5, score_threshold=0.0):
    """Greedy score-ordered matching (Matterport ``mrcnn.utils.compute_matches``).

    Args: boxes ``[N, 4]`` (all-zero rows are padding and dropped), class ids ``[N]``, masks
    ``[H, W, N]``, scores ``[N_pred]``. Predictions are sorted by score (descending); each takes
    the unmatched ground truth of highest IoU if that IoU >= ``iou_threshold`` and the classes
    agree.
    Returns ``gt_match [N_gt]`` (index of the matched sorted prediction or -1),
    ``pred_match [N_pred]`` (matched gt index or -1) and ``overlaps [N_pred, N_gt]`` (sorted preds).
    """
    gk = _trim(gt_boxes)
    pk = _trim(pred_boxes)
    gt_class_ids = np.asarray(gt_class_ids)[gk]
    gt_masks = np.asarray(gt_masks)[..., gk]
    pred_class_ids = np.asarray(pred_class_ids)[pk]
    pred_scores = np.asarray(pred_scores)[pk]
    pred_masks = np.asarray(pred_masks)[..., pk]
    order = np.argsort(-pred_scores, kind="stable")
    pred_class_ids, pred_masks = pred_class_ids[order], pred_masks[..., order]
    overlaps = compute_overlaps_masks(pred_masks, gt_masks)
    gt_match = -np.ones(overlaps.shape[1])
    pred_match = -np.ones(overlaps.shape[0])
    # Greedy matching is sequential over predictions by definition; each step is vectorised.
    for i in range(overlaps.shape[0]):
        cand = np.argsort(-overlaps[i], kind="stable")
        ious = overlaps[i, cand]
        cut = np.flatnonzero(ious < score_threshold)
        if cut.size:
            cand, ious = cand[:cut[0]], ious[:cut[0]]
        # first free gt above the threshold whose class agrees (a class mismatch moves on)
        ok = (gt_match[cand] == -1) & (ious >= iou_threshold) & \
            (gt_class_ids[cand] == pred_class_ids[i])
        if ok.any():
            j = cand[np.argmax(ok)]
            gt_match[j] = i
            pred_match[i] = j
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
               pred_masks, iou_threshold=0.5):
    """Average precision at one IoU threshold (Matterport ``mrcnn.utils.compute_ap``, VOC style).

    Arguments as :func:`compute_matches`. Returns ``mAP`` (float), ``precisions [N_pred + 2]``,
    ``recalls [N_pred + 2]`` (padded with 0/1 at the ends, precision made monotone) and
    ``overlaps [N_pred, N_gt]``.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold)
    hits = np.cumsum(pred_match > -1)
    precisions = hits / (np.arange(len(pred_match)) + 1)
    recalls = hits.astype(np.float32) / max(len(gt_match), 1)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    precisions = np.maximum.accumulate(precisions[::-1])[::-1]
    steps = np.flatnonzero(recalls[:-1] != recalls[1:]) + 1
    m_ap = float(np.sum((recalls[steps] - recalls[steps - 1]) * precisions[steps]))
    return m_ap, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                     pred_mask, iou_thresholds=None, verbose=1):
    """Mean of :func:`compute_ap` over IoU thresholds (default 0.50:0.05:0.95). Returns a float."""
    thresholds = np.arange(0.5, 1.0, 0.05) if iou_thresholds is None else iou_thresholds
    aps = [compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                      pred_mask, iou_threshold=t)[0] for t in thresholds]
    ap = float(np.mean(aps))
    if verbose:
        print(f"AP @{thresholds[0]:.2f}-{thresholds[-1]:.2f}:\t {ap:.3f}")
    return ap


def compute_recall(pred_boxes, gt_boxes, iou):
    """Box recall (Matterport ``compute_recall``): share of gt boxes hit with IoU >= ``iou``.

    Args: ``pred_boxes [N, 4]``, ``gt_boxes [M, 4]`` as (y1, x1, y2, x2). Returns
    ``(recall, positive_ids)`` where ``positive_ids`` are the predictions with IoU >= ``iou``.
    """
    overlaps = compute_overlaps(np.reshape(np.asarray(pred_boxes, np.float64), (-1, 4)),
                                np.reshape(np.asarray(gt_boxes, np.float64), (-1, 4)))
    n_gt = overlaps.shape[1]
    if overlaps.size == 0:
        return 0.0, np.zeros(0, np.int64)
    best = overlaps.max(axis=1)
    which = overlaps.argmax(axis=1)
    positive_ids = np.flatnonzero(best >= iou)
    recall = np.unique(which[positive_ids]).size / n_gt
    return recall, positive_ids
