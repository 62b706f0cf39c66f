"""COCO mask AP (iouType ``"segm"``, one category) with pycocotools or a NumPy twin."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from ..boxes import compute_overlaps_masks
from .labels import instance_rles, label_to_masks, to_label
from .matching import Contingency

__all__ = ["coco_mask_ap"]


def _as_lists(gts, preds, scores):
    """``gts``, ``preds`` (and ``scores`` unless None) as lists of one entry per image."""
    gts, preds = list(gts), list(preds)
    if len(gts) != len(preds):
        raise ValueError(f"gts has {len(gts)} images but preds has {len(preds)}")
    if scores is not None:
        scores = list(scores)
        if len(scores) != len(preds):
            raise ValueError(f"scores has {len(scores)} entries but preds has {len(preds)} images")
    return gts, preds, scores


def _image_scores(scores, i, n):
    """``[n]`` float64 scores of image ``i`` (all 1.0 when ``scores`` is None)."""
    s = np.ones(n) if scores is None else np.asarray(scores[i], np.float64).ravel()
    if s.size != n:
        raise ValueError(f"scores[{i}] has {s.size} values but preds[{i}] has {n} instances (one "
                         "score per instance, in channel order for stacks or ascending label id "
                         "for label images)")
    return s


def _coco_objects(gts, preds, scores):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    gts, preds, scores = _as_lists(gts, preds, scores)
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
        s = _image_scores(scores, i, len(p_rles))
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
    gts, preds, scores = _as_lists(gts, preds, scores)
    all_scores, all_match, n_gt_total = [], [], 0
    for i, (g, p) in enumerate(zip(gts, preds)):
        iou = _dt_gt_iou(g, p, i)
        n_dt, n_gt = iou.shape
        n_gt_total += n_gt
        s = _image_scores(scores, i, n_dt)
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
