"""Instance-segmentation metrics for nuclei, all from one pixel contingency table per image.

Inputs are label images ``[H, W]`` of integers (0 = background, every other value one nucleus;
ids need not be consecutive) or instance stacks ``[H, W, N]`` bool, which :func:`to_label` turns
into a label image with :func:`masks_to_label` (where stacked masks overlap, the earlier
channel wins: the package's one overlap rule).  Ground truth and
prediction must have the same height and width.

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

Empty images (documented per function): DSB, Dice, AJI, AJI+ and F1 score 1.0 when both images are
empty and 0.0 when exactly one is; PQ returns ``(nan, nan, nan)`` for empty vs empty so that
nan-means skip the image; matched mean IoU is nan when nothing matches.

Bad input (every per-image metric, through :func:`to_label`): ground truth and prediction of
different height/width raise ``ValueError``; a 2-D label image of non-integer dtype (float, even
with whole values) raises ``TypeError``, and so does a 2-D bool mask (except in :func:`dice`) or a
3-D stack that is not bool/0-1; negative ids or an ndim other than 2/3 raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..boxes import compute_overlaps, compute_overlaps_masks

__all__ = [
    "to_label", "relabel_sequential", "check_stack", "masks_to_label", "label_to_masks",
    "label_runs", "label_rle_counts", "instance_rles", "Contingency", "contingency", "match_instances",
    "dsb_score", "dsb_score_dataset", "DSB_THRESHOLDS",
    "aji", "aji_plus", "panoptic_quality", "dice", "matched_mean_iou", "f1_detection",
    "evaluate_all", "coco_mask_ap",
    "compute_overlaps_masks", "compute_matches", "compute_ap", "compute_ap_range",
    "compute_recall", "pannuke_bpq", "pannuke_mpq",
]

#: Largest dense contingency table (entries) built for one image (~1 GB of int64).
_MAX_TABLE = 2 ** 27

#: IoU thresholds of the Kaggle DSB2018 score: 0.50, 0.55, ..., 0.95.
DSB_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


# --------------------------------------------------------------------------- inputs
def to_label(x, name="label"):
    """Label image ``[H, W]`` int64 from a label image or an instance stack.

    Args:
        x: ``[H, W]`` integer label image (0 = background), or ``[H, W, N]`` bool/0-1 instance
            stack, converted by :func:`masks_to_label` (channel ``k`` gets id ``k + 1``; where
            masks overlap the earlier channel wins).
        name: argument name used in error messages.
    Returns:
        ``[H, W]`` int64 label image (ids as given, not relabelled).
    Raises:
        TypeError for float/complex/object arrays, ValueError for negative ids or a wrong ndim.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        return masks_to_label(x, name=name).astype(np.int64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a label image [H, W] or an instance stack [H, W, N], "
                         f"got shape {x.shape}")
    if x.dtype == bool:
        raise TypeError(f"{name}: a 2-D bool array is a foreground mask, not a label image; "
                        "label it first (scipy.ndimage.label(mask)[0]) or pass mask[..., None] "
                        "for a single instance")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name}: label images must have an integer dtype, got {x.dtype}; "
                        "if the values are whole numbers cast with .astype(np.int32)")
    if x.size and x.min() < 0:
        raise ValueError(f"{name}: label ids must be >= 0 (0 = background), found {x.min()}")
    return x.astype(np.int64, copy=False)


def check_stack(masks, name="masks"):
    """``[H, W, N]`` bool view of an instance stack of bool or 0/1 masks (ints or floats).

    Raises ValueError for another ndim and TypeError for other values (soft masks).
    """
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"{name}: expected an instance stack [H, W, N], got shape {m.shape}")
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)) \
                or not np.isin(m, (0, 1)).all():
            raise TypeError(f"{name}: an instance stack [H, W, N] must be bool or 0/1 masks, got "
                            f"dtype {m.dtype}; threshold soft masks first (masks >= 0.5), or pass "
                            "a label image [H, W]")
        m = m.astype(bool)
    return m


def _overlap_rank(masks, scores, mode):
    """Rank ``[N]`` int: higher wins a contested pixel; ties go to the earlier channel."""
    n = masks.shape[-1]
    if mode == "score":
        if scores is None:
            key = np.zeros(n)  # all tied: the earlier channel wins (detect sorts by score)
        else:
            key = np.asarray(scores, np.float64).ravel()
            if key.size != n:
                raise ValueError(f"scores has {key.size} values but masks has {n} instances")
    elif mode == "area":
        key = masks.sum(axis=(0, 1)).astype(np.float64)
    else:
        raise ValueError(f"mode={mode!r}: use 'score' (higher score wins) or 'area' (larger wins)")
    order = np.lexsort((-np.arange(n), key))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def masks_to_label(masks, scores=None, mode="score", name="masks"):
    """Label image ``[H, W]`` int32 from a stack ``[H, W, N]``; channel ``k`` becomes id ``k + 1``.

    The overlap rule of the whole package (every stack -> label conversion uses this function:
    :func:`to_label` and so every metric given a stack, Kaggle submissions, the U-Net's
    targets): a pixel covered by several masks goes to the mask of higher ``scores [N]``, or with
    ``mode="area"`` to the larger mask; on ties and without scores the EARLIER channel wins (Mask
    R-CNN detections come sorted by score, best first). Scoring a stack and scoring its label
    image therefore agree. Ids of instances that lose all their pixels disappear (ids are not
    renumbered, so they still index ``scores``).

    Args:
        masks: ``[H, W, N]`` bool or 0/1 stack. name: argument name for error messages.
    """
    m = check_stack(masks, name)
    h, w, n = m.shape
    label = np.zeros((h, w), np.int32)
    if n == 0:
        return label
    rank = _overlap_rank(m, scores, mode)
    order = np.argsort(rank, kind="stable")  # ascending: the last painted wins
    ys, xs, ks = np.nonzero(m[..., order])  # C order: for one pixel, channels ascending
    flat = ys * w + xs
    last = np.ones(flat.size, bool)
    last[:-1] = flat[1:] != flat[:-1]
    label.ravel()[flat[last]] = order[ks[last]] + 1
    return label


def label_to_masks(label, return_ids=False, n_instances=None):
    """Instance stack ``[H, W, N]`` bool from a label image, one channel per id in ascending order.

    With ``return_ids=True`` also returns the ids ``[N]``. With ``n_instances`` the ids are not
    renumbered: id ``k`` goes to channel ``k - 1`` of ``N = n_instances`` channels (the inverse of
    :func:`masks_to_label`, keeping channels aligned with scores; empty channels stay).
    """
    lab = to_label(label, "label")
    if n_instances is None:
        lab, ids = relabel_sequential(lab)
        n = ids.size
    else:
        n = int(n_instances)
        if lab.size and lab.max() > n:
            raise ValueError(f"label: id {lab.max()} does not fit n_instances={n}")
        ids = np.arange(1, n + 1)
    out = np.zeros(lab.shape + (n,), bool)
    ys, xs = np.nonzero(lab)
    out[ys, xs, lab[ys, xs] - 1] = True
    return (out, ids) if return_ids else out


def relabel_sequential(label):
    """Relabel ``[H, W]`` ids to ``0..n`` keeping their order.

    Returns ``(label [H, W] int64, ids [n])``.

    ``ids[k]`` is the original id of new id ``k + 1``.
    """
    label = np.asarray(label)
    if label.size == 0:
        return label.astype(np.int64), np.zeros(0, np.int64)
    top = int(label.max())
    if top <= 4 * label.size + 1024:  # bincount lookup table: O(pixels + max id)
        present = np.bincount(label.ravel(), minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[label], ids
    ids, inverse = np.unique(label, return_inverse=True)
    if ids[0] != 0:
        return (inverse + 1).reshape(label.shape).astype(np.int64), ids
    return inverse.reshape(label.shape).astype(np.int64), ids[1:]


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


# --------------------------------------------------------------------------- run-length encoding
def label_runs(label):
    """Column-major runs of every instance. Returns ``ids [n]``, and per run ``owner`` (0..n-1),
    ``start`` (0-based column-major pixel index) and ``length``, sorted by owner then start."""
    label = to_label(label, "label")
    f = label.ravel(order="F")
    nz = np.flatnonzero(f)
    lab = f[nz]
    order = np.argsort(lab, kind="stable")
    pos, lab = nz[order], lab[order]
    if pos.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e, e
    brk = np.ones(pos.size, bool)
    brk[1:] = (lab[1:] != lab[:-1]) | (pos[1:] != pos[:-1] + 1)
    first = np.flatnonzero(brk)
    starts = pos[first]
    lengths = np.diff(np.append(first, pos.size))
    ids, owner = np.unique(lab[first], return_inverse=True)
    return ids, owner.ravel(), starts, lengths


def label_rle_counts(label):
    """COCO uncompressed RLE counts (column-major, starting with a background run) per instance.

    Args: ``label [H, W]`` int. Returns ``(counts, ids)``: a list of int lists, one per id in
    ascending order, and the ids ``[n]``.
    """
    label = to_label(label, "label")
    ids, owner, starts, lengths = label_runs(label)
    if ids.size == 0:
        return [], ids
    ends = starts + lengths
    new = np.ones(owner.size, bool)
    new[1:] = owner[1:] != owner[:-1]
    prev_end = np.concatenate([[0], ends[:-1]])
    gaps = np.where(new, starts, starts - prev_end)
    inter = np.empty(2 * owner.size, np.int64)
    inter[0::2], inter[1::2] = gaps, lengths
    cuts = 2 * np.flatnonzero(new)[1:]
    last_ends = ends[np.append(np.flatnonzero(new)[1:] - 1, owner.size - 1)]
    tails = label.size - last_ends
    # a run reaching the last pixel has no trailing background count (as pycocotools writes it)
    return [c.tolist() + ([int(t)] if t else []) for c, t in zip(np.split(inter, cuts), tails)], ids


def instance_rles(x, name="masks"):
    """pycocotools RLEs of the instances of a stack or a label image.

    Args:
        x: ``[H, W, N]`` bool/0-1 stack (instances in channel order; may overlap) or ``[H, W]``
            label image (instances in ascending id order).
        name: argument name for error messages.
    Returns:
        ``(rles, ids)``: a list of compressed RLE dicts (``size``, ``counts`` bytes) and the ids
        ``[N]`` (``1..N`` for a stack).
    """
    from pycocotools import mask as mask_utils

    x = np.asarray(x)
    if x.ndim == 3:
        x = check_stack(x, name)
        ids = np.arange(1, x.shape[-1] + 1)
        if x.shape[-1] == 0:
            return [], ids
        return mask_utils.encode(np.asfortranarray(x.astype(np.uint8))), ids
    label = to_label(x, name)
    counts, ids = label_rle_counts(label)
    if not counts:
        return [], ids
    h, w = label.shape
    return mask_utils.frPyObjects([{"size": [h, w], "counts": c} for c in counts], h, w), ids


# --------------------------------------------------------------------------- per-image metrics
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
    if c.empty:
        return (float("nan"),) * 3
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
    ``(nan, nan, nan)`` so that nan-means skip the image.
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


# --------------------------------------------------------------------------- COCO AP
def _coco_objects(gts, preds, scores):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    gts, preds = list(gts), list(preds)
    if len(gts) != len(preds):
        raise ValueError(f"gts has {len(gts)} images but preds has {len(preds)}")
    if scores is not None:
        scores = list(scores)
        if len(scores) != len(preds):
            raise ValueError(f"scores has {len(scores)} entries but preds has {len(preds)} images")
    images, anns, dets = [], [], []
    for i, (g, p) in enumerate(zip(gts, preds)):
        g, p = np.asarray(g), np.asarray(p)
        if g.shape[:2] != p.shape[:2]:
            raise ValueError(f"image {i}: gt has shape {g.shape[:2]} but pred has {p.shape[:2]}")
        h, w = g.shape[:2]
        images.append({"id": i + 1, "height": h, "width": w})
        g_rles, _ = instance_rles(g, f"gts[{i}]")
        # pycocotools' area() overflows on lists longer than 255 with NumPy 2: chunk it
        areas = np.concatenate([mask_utils.area(g_rles[k:k + 200])
                                for k in range(0, len(g_rles), 200)]) if len(g_rles) else []
        boxes = mask_utils.toBbox(g_rles) if len(g_rles) else []
        for rle, area, box in zip(g_rles, areas, boxes):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "segmentation": rle, "area": float(area), "bbox": [float(b) for b in box],
                         "iscrowd": 0})
        p_rles, _ = instance_rles(p, f"preds[{i}]")
        if scores is None:
            s = np.ones(len(p_rles))
        else:
            s = np.asarray(scores[i], dtype=np.float64).ravel()
            if s.size != len(p_rles):
                raise ValueError(f"scores[{i}] has {s.size} values but preds[{i}] has "
                                 f"{len(p_rles)} instances (one score per instance, in channel "
                                 "order for stacks or ascending label id for label images)")
        for rle, score in zip(p_rles, s):
            dets.append({"image_id": i + 1, "category_id": 1, "segmentation": rle,
                         "score": float(score)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": "nucleus"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, dets, len(anns)


def coco_mask_ap(gts, preds, scores=None, max_dets=(1, 10, 1000), backend="pycocotools"):
    """COCO mask AP (iouType ``"segm"``, one category) over a set of images.

    Args:
        gts: list of ground-truth label images ``[H, W]`` or stacks ``[H, W, N]``.
        preds: list of predictions, same kinds; stacks may overlap (COCO allows it).
        scores: optional list of ``[n_pred]`` confidences per image (channel order for stacks,
            ascending label id for label images); default 1.0 for every instance.
        max_dets: COCOeval ``maxDets``; AP uses the largest value (COCOeval sorts them). The
            default 1000 keeps every nucleus of crowded images (COCO's standard is
            ``(1, 10, 100)``).
        backend: ``"pycocotools"`` runs COCOeval itself (RLE masks); ``"numpy"`` runs the same
            matching and accumulation on the contingency-table IoUs, about 50x faster on crowded
            images and equal to COCOeval (the tests check this).
    Returns:
        dict ``AP`` (IoU .50:.05:.95), ``AP50``, ``AP75``: floats; 0.0 when there are ground-truth
        nuclei but no prediction, nan when there are no ground-truth nuclei at all.
    """
    if backend == "numpy":
        return _coco_ap_numpy(gts, preds, scores, int(max(max_dets)))
    if backend != "pycocotools":
        raise ValueError(f"backend={backend!r}: use 'pycocotools' or 'numpy'")
    from pycocotools.cocoeval import COCOeval

    coco_gt, dets, n_gt = _coco_objects(gts, preds, scores)
    if n_gt == 0:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    return _ap_summary(ev.eval["precision"][:, :, 0, 0, -1], ev.params.iouThrs)


_COCO_IOUS = np.linspace(0.5, 0.95, 10)
_COCO_RECALLS = np.linspace(0.0, 1.0, 101)


def _ap_summary(prec, thr):
    """AP, AP50, AP75 from a ``[T, R]`` precision table (-1 = undefined)."""

    def mean_valid(a):
        a = a[a > -1]
        return float(a.mean()) if a.size else float("nan")

    return {"AP": mean_valid(prec),
            "AP50": mean_valid(prec[np.isclose(thr, 0.5)]),
            "AP75": mean_valid(prec[np.isclose(thr, 0.75)])}


def _dt_gt_iou(g, p, i):
    """IoU ``[n_pred, n_gt]`` of one image, predictions in instance order."""
    g, p = np.asarray(g), np.asarray(p)
    if g.shape[:2] != p.shape[:2]:
        raise ValueError(f"image {i}: gt has shape {g.shape[:2]} but pred has {p.shape[:2]}")
    if g.ndim == 2 and p.ndim == 2:
        return Contingency(g, p).iou.T
    gs = g if g.ndim == 3 else label_to_masks(to_label(g, f"gts[{i}]"))
    ps = p if p.ndim == 3 else label_to_masks(to_label(p, f"preds[{i}]"))
    return compute_overlaps_masks(ps, gs)


def _greedy_coco(iou, thresholds):
    """COCOeval's matching of score-sorted detections. Returns matched ``[T, n_dt]`` bool.

    Each detection takes, among ground truths not yet matched, the one of highest IoU >= t
    (ties: the later ground truth, as COCOeval). Only pairs with IoU >= 0.5 can match, so the
    sequential greedy walks the sparse candidate pairs, not all pairs.
    """
    n_dt, n_gt = iou.shape
    matched = np.zeros((len(thresholds), n_dt), bool)
    if n_dt == 0 or n_gt == 0:
        return matched
    dd, gg = np.nonzero(iou >= min(thresholds.min(), 1 - 1e-10))
    vv = iou[dd, gg]
    dd, gg, vv = dd.tolist(), gg.tolist(), vv.tolist()
    for ti, t in enumerate(thresholds):
        t = min(float(t), 1 - 1e-10)
        taken = set()
        k, n = 0, len(dd)
        while k < n:  # walk one detection's candidates at a time (dd is sorted)
            d, best, best_iou = dd[k], -1, t
            while k < n and dd[k] == d:
                if gg[k] not in taken and vv[k] >= best_iou:
                    best, best_iou = gg[k], vv[k]
                k += 1
            if best >= 0:
                taken.add(best)
                matched[ti, d] = True
    return matched


def _coco_ap_numpy(gts, preds, scores, max_det):
    gts, preds = list(gts), list(preds)
    if len(gts) != len(preds):
        raise ValueError(f"gts has {len(gts)} images but preds has {len(preds)}")
    if scores is not None:
        scores = list(scores)
        if len(scores) != len(preds):
            raise ValueError(f"scores has {len(scores)} entries but preds has {len(preds)} images")
    all_scores, all_match, n_gt_total = [], [], 0
    for i, (g, p) in enumerate(zip(gts, preds)):
        iou = _dt_gt_iou(g, p, i)
        n_dt, n_gt = iou.shape
        n_gt_total += n_gt
        s = np.ones(n_dt) if scores is None else np.asarray(scores[i], np.float64).ravel()
        if s.size != n_dt:
            raise ValueError(f"scores[{i}] has {s.size} values but preds[{i}] has {n_dt} "
                             "instances (one score per instance, in channel order for stacks or "
                             "ascending label id for label images)")
        order = np.argsort(-s, kind="mergesort")[:max_det]
        all_scores.append(s[order])
        all_match.append(_greedy_coco(iou[order], _COCO_IOUS))
    if n_gt_total == 0:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    s = np.concatenate(all_scores)
    order = np.argsort(-s, kind="mergesort")
    tps = np.concatenate(all_match, axis=1)[:, order]
    tp = np.cumsum(tps, axis=1, dtype=np.float64)
    fp = np.cumsum(~tps, axis=1, dtype=np.float64)
    nd = tps.shape[1]
    prec = np.zeros((len(_COCO_IOUS), len(_COCO_RECALLS)))
    if nd:
        rc = tp / n_gt_total
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        for t in range(len(_COCO_IOUS)):  # ten thresholds
            inds = np.searchsorted(rc[t], _COCO_RECALLS, side="left")
            ok = inds < nd
            prec[t, ok] = pr[t, inds[ok]]
    return _ap_summary(prec, _COCO_IOUS)


# --------------------------------------------------------------------------- Matterport API
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


# --------------------------------------------------------------------------- PanNuke
def _pannuke_stack(x, n_classes, name):
    """Per-class instance maps ``[H, W, n_classes]`` from a PanNuke stack or (label, class_map)."""
    if isinstance(x, (tuple, list)) and len(x) == 2:
        label, cls = to_label(x[0], f"{name}[0]"), np.asarray(x[1])
        if cls.shape != label.shape:
            raise ValueError(f"{name}: the class map must have the label's shape {label.shape}, "
                             f"got {cls.shape}")
        classes = np.arange(1, n_classes + 1)
        return np.where(cls[..., None] == classes, label[..., None], 0)
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[-1] < n_classes:
        raise ValueError(f"{name}: expected a PanNuke mask stack [H, W, C>={n_classes}] of "
                         f"per-class instance maps or a (label, class_map) pair, got shape "
                         f"{x.shape}")
    if not np.issubdtype(x.dtype, np.number) or (np.issubdtype(x.dtype, np.floating)
                                                  and np.any(x[..., :n_classes] % 1)):
        raise TypeError(f"{name}: per-class instance maps must hold whole-number ids, got dtype "
                        f"{x.dtype} with fractional values")
    return x[..., :n_classes].astype(np.int64)


def _binarize(stack):
    """One instance map from per-class channels; later channels win where they overlap."""
    out = np.zeros(stack.shape[:2], np.int64)
    offset = 0
    for k in range(stack.shape[-1]):  # loop over the few class channels, not instances
        ch, ids = relabel_sequential(stack[..., k])
        out = np.where(ch > 0, ch + offset, out)
        offset += ids.size
    return out


def _tissue_means(per_image, tissues):
    tissues = np.asarray([str(t) for t in tissues])
    per_tissue = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in dict.fromkeys(tissues.tolist()):
            per_tissue[t] = float(np.nanmean(per_image[tissues == t]))
        overall = float(np.nanmean(list(per_tissue.values()))) if per_tissue else float("nan")
    return overall, per_tissue


def _check_lists(a, b, tissues, names):
    a, b, tissues = list(a), list(b), list(tissues)
    if not (len(a) == len(b) == len(tissues)):
        raise ValueError(f"{names[0]}, {names[1]} and tissues must have one entry per image; got "
                         f"{len(a)}, {len(b)} and {len(tissues)}")
    return a, b, tissues


def pannuke_bpq(gts, preds, tissues, n_classes=5):
    """PanNuke binary PQ (Gamper et al. 2020).

    Per-image PQ of all nuclei, averaged per tissue, then over tissues.

    Args:
        gts, preds: per image a label image ``[H, W]`` or a PanNuke mask stack ``[H, W, C]`` whose
            first ``n_classes`` channels are per-class instance maps (merged into one map, later
            channels winning), or a ``(label, class_map)`` pair.
        tissues: tissue name per image.
    Returns:
        ``(bpq, per_tissue)``: float and dict tissue -> mean PQ. Images with empty ground truth
        are skipped (nan), as in the PanNuke evaluation.
    """
    gts, preds, tissues = _check_lists(gts, preds, tissues, ("gts", "preds"))
    vals = np.full(len(gts), np.nan)
    for i, (g, p) in enumerate(zip(gts, preds)):  # one PQ per image
        g = _binarize(_pannuke_stack(g, n_classes, f"gts[{i}]")) if np.ndim(g) == 3 or \
            isinstance(g, tuple) else to_label(g, f"gts[{i}]")
        p = _binarize(_pannuke_stack(p, n_classes, f"preds[{i}]")) if np.ndim(p) == 3 or \
            isinstance(p, tuple) else to_label(p, f"preds[{i}]")
        if g.any():
            vals[i] = _pq(Contingency(g, p))[0]
    return _tissue_means(vals, tissues)


def pannuke_mpq(gt_type_maps, pred_type_maps, tissues, n_classes=5):
    """PanNuke multi-class PQ (Gamper et al. 2020).

    Per image the nan-mean over classes of the per-class PQ, averaged per tissue, then over
    tissues.

    Args:
        gt_type_maps, pred_type_maps: per image a PanNuke mask stack ``[H, W, C]`` (channel ``c``
            = instance map of class ``c + 1``, as ``masks.npy``; only the first ``n_classes`` are
            used) or a ``(label [H, W], class_map [H, W])`` pair with classes ``1..n_classes``.
        tissues: tissue name per image.
    Returns:
        ``(mpq, per_tissue)``. A class absent from an image's ground truth is skipped for that
        image (nan); a class present in ground truth but not predicted scores 0.
    """
    gts, preds, tissues = _check_lists(gt_type_maps, pred_type_maps, tissues,
                                       ("gt_type_maps", "pred_type_maps"))
    vals = np.full(len(gts), np.nan)
    for i, (g, p) in enumerate(zip(gts, preds)):
        gs = _pannuke_stack(g, n_classes, f"gt_type_maps[{i}]")
        ps = _pannuke_stack(p, n_classes, f"pred_type_maps[{i}]")
        if gs.shape[:2] != ps.shape[:2]:
            raise ValueError(f"image {i}: gt {gs.shape[:2]} and pred {ps.shape[:2]} differ in size")
        pqs = [(_pq(Contingency(gs[..., c], ps[..., c]))[0] if gs[..., c].any() else np.nan)
               for c in range(n_classes)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vals[i] = np.nanmean(pqs)
    return _tissue_means(vals, tissues)
