"""Per-image instance metrics: Kaggle DSB2018 score, AJI, AJI+, PQ, Dice, matched IoU, F1.

Inputs are label images ``[H, W]`` or instance stacks ``[H, W, N]`` (converted by
:func:`~mrcnn_nuclei.metrics.labels.to_label`); every metric reads one
:class:`~mrcnn_nuclei.metrics.matching.Contingency` table.

Empty images (documented per function): DSB, Dice, AJI, AJI+, F1 and PQ (with DQ and SQ) score 1.0
when both images are empty - a perfect empty prediction - and 0.0 when exactly one is, so an image
without nuclei counts the same way in every mean; matched mean IoU is nan when nothing matches
(nan-means skip it).  PanNuke's bPQ/mPQ skip images without ground truth, as PanNuke does.

Bad input (every per-image metric, through :func:`to_label`): ground truth and prediction of
different height/width raise ``ValueError``; a 2-D label image of non-integer dtype (float, even
with whole values) raises ``TypeError``, and so does a 2-D bool mask (except in :func:`dice`) or a
3-D stack that is not bool/0-1; negative ids or an ndim other than 2/3 raise ``ValueError``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .matching import Contingency, _pair

__all__ = ["DSB_THRESHOLDS", "dsb_score", "dsb_score_dataset", "aji", "aji_plus",
           "panoptic_quality", "dice", "matched_mean_iou", "f1_detection", "evaluate_all"]

#: IoU thresholds of the Kaggle DSB2018 score: 0.50, 0.55, ..., 0.95.
DSB_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def _dsb(c):
    if c.empty:
        return 1.0
    if c.n_gt == 0 or c.n_pred == 0:
        return 0.0
    _, _, v = c.match(0.5)
    tp = (v[None, :] > DSB_THRESHOLDS[:, None]).sum(axis=1)
    return float(np.mean(tp / (c.n_gt + c.n_pred - tp)))


def dsb_score(gt, pred):
    """Kaggle DSB2018 score of one image: mean over IoU t in 0.50:0.05:0.95 of TP/(TP+FP+FN).

    A match needs IoU > t.  Args: ``gt``, ``pred`` label images ``[H, W]`` (or stacks
    ``[H, W, N]``). Returns a float; empty vs empty = 1.0, exactly one empty = 0.0.
    """
    return _dsb(Contingency(gt, pred))


def dsb_score_dataset(gts, preds):
    """Mean of :func:`dsb_score` over images (lists of ``[H, W]`` label images). Returns a float.

    Raises ``ValueError`` when the lists differ in length or are empty.
    """
    gts, preds = list(gts), list(preds)
    if len(gts) != len(preds):
        raise ValueError(f"gts has {len(gts)} images but preds has {len(preds)}")
    if not gts:
        raise ValueError("gts is empty: need at least one image")
    return float(np.mean([dsb_score(g, p) for g, p in zip(gts, preds)]))


def _aji(c):
    if c.empty:
        return 1.0
    if c.n_gt == 0 or c.n_pred == 0:
        return 0.0
    best = np.argmax(c.iou, axis=1)  # ties: lowest pred index
    rows = np.arange(c.n_gt)
    hit = c.iou[rows, best] > 0
    inter = c.inter[rows[hit], best[hit]].sum()
    union = c.union[rows[hit], best[hit]].sum() + c.gt_area[~hit].sum()
    used = np.zeros(c.n_pred, bool)
    used[best[hit]] = True
    union += c.pred_area[~used].sum()
    return float(inter / union)


def aji(gt, pred):
    """Aggregated Jaccard Index (Kumar et al. 2017) of one image.

    Each ground-truth nucleus takes the prediction of highest IoU (it may be reused by several
    nuclei; a nucleus with no overlapping prediction adds its area to the union); predictions used
    by no nucleus add their area to the union. Returns sum(intersections) / sum(unions);
    empty vs empty = 1.0, exactly one empty = 0.0.
    """
    return _aji(Contingency(gt, pred))


def _aji_plus(c):
    if c.empty:
        return 1.0
    if c.n_gt == 0 or c.n_pred == 0:
        return 0.0
    gi, pi = linear_sum_assignment(-c.iou)
    keep = c.iou[gi, pi] > 0
    gi, pi = gi[keep], pi[keep]
    inter = c.inter[gi, pi].sum()
    gt_left = np.ones(c.n_gt, bool)
    gt_left[gi] = False
    pred_left = np.ones(c.n_pred, bool)
    pred_left[pi] = False
    union = c.union[gi, pi].sum() + c.gt_area[gt_left].sum() + c.pred_area[pred_left].sum()
    return float(inter / union)


def aji_plus(gt, pred):
    """AJI+ : AJI with a one-to-one pairing (Hungarian assignment maximising summed IoU).

    Pairs of zero IoU are dropped; unpaired nuclei and predictions add their areas to the union.
    Returns a float; empty vs empty = 1.0, exactly one empty = 0.0.
    """
    return _aji_plus(Contingency(gt, pred))


def _pq(c, match_iou=0.5):
    if c.empty:  # empty vs empty: a perfect prediction, as DSB / AJI / F1
        return 1.0, 1.0, 1.0
    gi, _, v = c.match(match_iou)
    tp = gi.size
    fp, fn = c.n_pred - tp, c.n_gt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(v.mean()) if tp else 0.0
    return float(dq * sq), float(dq), sq


def panoptic_quality(gt, pred, match_iou=0.5):
    """Panoptic quality of one image (Kirillov et al.; HoVer-Net ``get_fast_pq``).

    Returns ``(pq, dq, sq)``.

    Unique matching at IoU > ``match_iou``; ``dq = TP / (TP + FP/2 + FN/2)``, ``sq`` = mean IoU of
    the TPs (0.0 when there is none), ``pq = dq * sq``.  Empty vs empty returns
    ``(1.0, 1.0, 1.0)`` (a perfect empty prediction, as :func:`dsb_score`, :func:`aji` and
    :func:`f1_detection`); exactly one empty gives ``(0.0, 0.0, 0.0)``.
    """
    return _pq(Contingency(gt, pred), match_iou)


def dice(gt, pred):
    """Pixel Dice of the foregrounds (``label > 0``): 2|A&B| / (|A| + |B|). Empty vs empty = 1.0.

    Besides label images and stacks, ``[H, W]`` bool foreground masks are accepted here.
    """
    gt = np.asarray(gt, np.uint8) if np.asarray(gt).dtype == bool and np.ndim(gt) == 2 else gt
    pred = np.asarray(pred, np.uint8) if np.asarray(pred).dtype == bool and np.ndim(pred) == 2 \
        else pred
    gt, pred = _pair(gt, pred)
    a, b = gt > 0, pred > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(a & b) / total)


def _dice_from_table(c):
    fg_gt = c.table[1:].sum()
    fg_pred = c.table[:, 1:].sum()
    total = fg_gt + fg_pred
    return 1.0 if total == 0 else float(2.0 * c.table[1:, 1:].sum() / total)


def _matched_iou(c, iou=0.5):
    _, _, v = c.match(iou)
    return float(v.mean()) if v.size else float("nan")


def matched_mean_iou(gt, pred, iou=0.5):
    """Mean IoU over the uniquely matched pairs with IoU > ``iou``; nan when nothing matches."""
    return _matched_iou(Contingency(gt, pred), iou)


def _f1(c, iou=0.5):
    if c.empty:
        return 1.0, 1.0, 1.0, 0
    tp = c.match(iou)[0].size
    precision = tp / c.n_pred if c.n_pred else 0.0
    recall = tp / c.n_gt if c.n_gt else 0.0
    return 2.0 * tp / (c.n_gt + c.n_pred), precision, recall, tp


def f1_detection(gt, pred, iou=0.5):
    """Detection F1 = 2 TP / (2 TP + FP + FN) with unique matching at IoU > ``iou``.

    Returns a float; empty vs empty = 1.0, exactly one empty = 0.0.
    """
    return float(_f1(Contingency(gt, pred), iou)[0])


def evaluate_all(gt, pred):
    """Every per-image metric from one contingency table. Returns a dict of floats/ints.

    Keys: ``dsb, aji, aji_plus, pq, dq, sq, dice, matched_iou, f1, precision, recall`` (IoU 0.5),
    ``n_gt, n_pred, tp, fp, fn`` (counts at IoU > 0.5).
    """
    c = Contingency(gt, pred)
    pq, dq, sq = _pq(c)
    f1, precision, recall, tp = _f1(c)
    return {
        "dsb": _dsb(c), "aji": _aji(c), "aji_plus": _aji_plus(c),
        "pq": pq, "dq": dq, "sq": sq, "dice": _dice_from_table(c),
        "matched_iou": _matched_iou(c), "f1": float(f1),
        "precision": float(precision), "recall": float(recall),
        "n_gt": int(c.n_gt), "n_pred": int(c.n_pred), "tp": int(tp),
        "fp": int(c.n_pred - tp), "fn": int(c.n_gt - tp),
    }
