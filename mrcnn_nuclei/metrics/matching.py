"""Matching nuclei: one pixel contingency table per image pair and the unique matching.

How everything is computed
--------------------------
Both images are relabelled to consecutive ids ``1..n``; one ``np.bincount`` over
``gt * (n_pred + 1) + pred`` gives the ``(n_gt + 1) x (n_pred + 1)`` intersection table (row and
column 0 are background); instance areas are its margins and the IoU matrix follows from it
(:class:`Contingency`).  No metric loops over pairs of instances.

Matching rules
--------------
* ``IoU > t`` with ``t >= 0.5`` can pair a ground-truth nucleus with at most one prediction (two
  predictions with IoU > 0.5 against one nucleus would have to overlap), so matching at such a
  threshold is just ``iou > t`` (Kaggle DSB2018, PQ, F1).  Below 0.5 the unique pairing is the
  Hungarian assignment that maximises the summed IoU (as HoVer-Net's ``get_fast_pq``).
* AJI (Kumar et al. 2017) pairs every ground-truth nucleus with the prediction of highest IoU
  (a prediction may serve several nuclei); AJI+ uses a one-to-one Hungarian assignment.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .labels import relabel_sequential, to_label

__all__ = ["Contingency", "contingency", "match_instances"]

#: Largest dense contingency table (entries) built for one image (~1 GB of int64).
_MAX_TABLE = 2 ** 27


def _pair(gt, pred):
    gt = to_label(gt, "gt")
    pred = to_label(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt has shape {gt.shape} but pred has shape {pred.shape}: ground truth "
                         "and prediction must cover the same image (resize or crop one of them)")
    return gt, pred


class Contingency:
    """Pixel contingency table of one image pair and everything derived from it.

    Attributes:
        table: ``[n_gt + 1, n_pred + 1]`` int64 pixel counts (row/column 0 = background).
        inter: ``[n_gt, n_pred]`` intersections; ``gt_area [n_gt]``, ``pred_area [n_pred]``.
        iou: ``[n_gt, n_pred]`` float64 IoU matrix.
        gt_ids, pred_ids: original ids of rows/columns ``1..n``.
    """

    def __init__(self, gt, pred):
        gt, pred = _pair(gt, pred)
        g, self.gt_ids = relabel_sequential(gt)
        p, self.pred_ids = relabel_sequential(pred)
        self.n_gt, self.n_pred = self.gt_ids.size, self.pred_ids.size
        cols = self.n_pred + 1
        if (self.n_gt + 1) * cols > _MAX_TABLE:
            raise ValueError(f"{self.n_gt} GT x {self.n_pred} predicted instances make a "
                             f"contingency table over {_MAX_TABLE} entries; evaluate tiles of "
                             "the slide separately (e.g. 2048x2048) and average")
        counts = np.bincount((g * cols + p).ravel(), minlength=(self.n_gt + 1) * cols)
        self.table = counts.reshape(self.n_gt + 1, cols)
        self.gt_area = self.table[1:].sum(axis=1)
        self.pred_area = self.table[:, 1:].sum(axis=0)
        self.inter = self.table[1:, 1:]
        self.union = self.gt_area[:, None] + self.pred_area[None, :] - self.inter
        with np.errstate(divide="ignore", invalid="ignore"):
            self.iou = np.where(self.inter > 0, self.inter / np.maximum(self.union, 1), 0.0)

    @property
    def empty(self):
        """True when both images have no instance."""
        return self.n_gt == 0 and self.n_pred == 0

    def match(self, iou_threshold=0.5):
        """Unique pairs with IoU > threshold.

        Returns ``(gt_idx [K], pred_idx [K], iou [K])`` as 0-based rows/columns.
        """
        if self.n_gt == 0 or self.n_pred == 0:
            e = np.zeros(0, np.int64)
            return e, e, np.zeros(0)
        if iou_threshold >= 0.5:
            gi, pi = np.nonzero(self.iou > iou_threshold)
        else:
            gi, pi = linear_sum_assignment(-self.iou)
            keep = self.iou[gi, pi] > iou_threshold
            gi, pi = gi[keep], pi[keep]
        return gi, pi, self.iou[gi, pi]


def contingency(gt, pred):
    """:class:`Contingency` of ``gt`` and ``pred`` (label images ``[H, W]`` or ``[H, W, N]``)."""
    return gt if isinstance(gt, Contingency) else Contingency(gt, pred)


def match_instances(gt, pred, iou=0.5):
    """Unique matching of nuclei.

    Returns ``(gt_ids [K], pred_ids [K], ious [K])`` in the original label ids.

    Pairs have IoU > ``iou``; for ``iou >= 0.5`` this is unique by construction, below that the
    Hungarian assignment maximising summed IoU is used.
    """
    c = Contingency(gt, pred)
    gi, pi, v = c.match(iou)
    return c.gt_ids[gi], c.pred_ids[pi], v
