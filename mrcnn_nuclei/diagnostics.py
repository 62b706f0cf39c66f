"""Where a segmentation loses its DSB score: per-image failure counts and their aggregates.

One image (:func:`diagnose_image`) gives, from ONE pixel contingency table
(:class:`mrcnn_nuclei.metrics.Contingency`, the matching of the DSB score itself):

* ``tp/fp/fn [10]`` at the DSB IoU thresholds 0.50:0.05:0.95 (a match needs IoU > t; the pairs
  are the unique IoU > 0.5 pairs, so ``mean(tp / (tp + fp + fn))`` is exactly
  :func:`mrcnn_nuclei.metrics.dsb_score`);
* the **score lost** at each threshold, ``1 - tp/u`` with ``u = tp + fp + fn``, split two ways
  (both sum to ``1 - DSB_t``): ``fp/u`` and ``fn/u``; and ``det_fp = fp_0.5/u`` (predictions
  matching nothing), ``det_fn = fn_0.5/u`` (nuclei found by nothing) and ``loc =
  2 (tp_0.5 - tp_t)/u`` (pairs that match at 0.5 but whose masks are not sharp enough for t);
* missed nuclei by ground-truth area (:data:`SIZE_BINS`, pixels at the image's own resolution):
  nuclei, misses (no prediction with IoU > 0.5), summed IoU of the matched ones;
* merges: a prediction holding > 50 % of the area of each of >= 2 nuclei; splits: a nucleus
  holding > 50 % of the area of each of >= 2 predictions;
* boundary error of the pairs matched at IoU > 0.5: their IoUs, the fraction of their nuclei's
  pixels left out (``under``: masks too small) and of their predicted pixels outside the nucleus
  (``over``: masks too large), and the mean distance in pixels from each boundary pixel of one
  to the nearest ground-truth (resp. predicted) boundary pixel (symmetric, over all pairs; the
  nearest boundary of ANY nucleus, which for touching nuclei may be the neighbour's);
* with scores: the predictions matched / unmatched at IoU > 0.5 by score bin (:data:`SCORE_BINS`).

:func:`summarize` adds the per-image records up, over all images and per image group and image
type (:data:`GROUP_TYPES`, DSB2018's ``image_groups.tsv``); :func:`format_report` prints it.
Everything per image is array arithmetic on the contingency table; the only loop is over images.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .datasets.dsb import read_image_groups
from .metrics import DSB_THRESHOLDS, Contingency, masks_to_label, to_label

__all__ = ["SIZE_BINS", "SIZE_LABELS", "SCORE_BINS", "GROUP_TYPES", "IMAGE_TYPES",
           "image_type", "label_boundaries", "diagnose_image", "summarize", "format_report",
           "read_groups", "to_jsonable", "format_comparison"]

#: Ground-truth area bins (pixels, at the image's own resolution): < 50, 50-150, 150-400, >= 400.
SIZE_BINS = (0, 50, 150, 400, math.inf)
SIZE_LABELS = ("<50", "50-150", "150-400", ">=400")
#: Prediction score bins for the matched / unmatched counts: [0, .5), [.5, .7), [.7, .9), [.9, 1].
SCORE_BINS = (0.0, 0.5, 0.7, 0.9, math.inf)
SCORE_LABELS = ("<0.5", "0.5-0.7", "0.7-0.9", ">=0.9")

#: DSB2018 stage-1 groups (``image_groups.tsv``: size x grey/colour) -> the four image types of
#: the failure analysis. Decided from the images: every grey group but 1024x1024 is fluorescence
#: (dark background, mean intensity 2-57 of 255), split by size into small (<= 360 px sides) and
#: large; 1024x1024 grey is brightfield (light background, mean 205-218, dark nuclei);
#: 256x320 colour is H&E-like tissue.
GROUP_TYPES = {
    "256x256_gray": "small_fluorescence", "256x320_gray": "small_fluorescence",
    "260x347_gray": "small_fluorescence", "360x360_gray": "small_fluorescence",
    "512x640_gray": "large_fluorescence", "520x696_gray": "large_fluorescence",
    "603x1272_gray": "large_fluorescence", "1040x1388_gray": "large_fluorescence",
    "256x320_color": "he_colour", "1024x1024_gray": "brightfield",
}
IMAGE_TYPES = ("small_fluorescence", "large_fluorescence", "he_colour", "brightfield")


def image_type(group):
    """The image type of a DSB group name (:data:`GROUP_TYPES`); ``"other"`` for unknown or None."""
    return GROUP_TYPES.get(group, "other") if group else "other"


#: ``{image_id: group}`` from an ``image_groups.tsv`` (the DSB loader's reader).
read_groups = read_image_groups


def label_boundaries(label):
    """Inner boundary of every instance: ``[H, W]`` bool, True on instance pixels with a
    4-neighbour of another id (background included). The image border is not a boundary."""
    lab = np.asarray(label)
    p = np.pad(lab, 1, mode="edge")
    centre = p[1:-1, 1:-1]
    edge = ((p[:-2, 1:-1] != centre) | (p[2:, 1:-1] != centre) | (p[1:-1, :-2] != centre)
            | (p[1:-1, 2:] != centre))
    return edge & (lab > 0)


def _prediction_label(pred, scores, overlap):
    """(label image, scores by label id - 1 or None) of a label image or a stack."""
    arr = np.asarray(pred)
    if arr.ndim == 3:
        return masks_to_label(arr, scores, overlap, name="pred"), scores
    return to_label(arr, "pred"), scores


def _boundary_distance(gt, pred, c, gi, pi):
    """(sum of distances, boundary pixel count) over the matched pairs' boundary pixels."""
    if gi.size == 0:
        return 0.0, 0
    gb, pb = label_boundaries(gt), label_boundaries(pred)
    matched_pred = np.zeros(int(pred.max()) + 1, bool)
    matched_pred[c.pred_ids[pi]] = True
    matched_gt = np.zeros(int(gt.max()) + 1, bool)
    matched_gt[c.gt_ids[gi]] = True
    sel_p = pb & matched_pred[pred]
    sel_g = gb & matched_gt[gt]
    d_to_gt = ndi.distance_transform_edt(~gb)
    d_to_pred = ndi.distance_transform_edt(~pb)
    total = float(d_to_gt[sel_p].sum() + d_to_pred[sel_g].sum())
    return total, int(sel_p.sum() + sel_g.sum())


def diagnose_image(gt, pred, scores=None, overlap="score", boundary_distance=True):
    """Failure counts of one image. Returns a dict of ints, floats and small arrays.

    Args:
        gt: ground-truth label image ``[H, W]`` (or stack ``[H, W, N]``).
        pred: predicted label image ``[H, W]`` (ids ``k`` <-> ``scores[k - 1]``) or stack
            ``[H, W, N]`` (channel ``k`` <-> ``scores[k]``; overlaps resolved by
            :func:`mrcnn_nuclei.metrics.masks_to_label` with ``overlap``).
        scores: optional ``[N]`` prediction confidences (only for the score-bin counts and to
            resolve a stack's overlaps).
        boundary_distance: also compute the mean boundary distance (two distance transforms).
    Keys: ``n_gt, n_pred, dsb, tp, fp, fn [10]`` (DSB thresholds), ``loss_fp, loss_fn, loss_det_fp,
    loss_det_fn, loss_loc [10]``, ``size_n, size_missed [4], size_iou_sum [4]``, ``merges,
    gt_in_merges, splits, pred_in_splits``, ``matched, iou_sum, gt_px, pred_px, inter_px``
    (matched pairs), ``bd_sum, bd_count``, ``score_tp, score_fp [4]`` (zeros without scores).
    """
    gt = to_label(gt, "gt")
    pred, scores = _prediction_label(pred, scores, overlap)
    c = Contingency(gt, pred)
    gi, pi, v = c.match(0.5)
    t = DSB_THRESHOLDS
    tp = (v[None, :] > t[:, None]).sum(axis=1).astype(np.int64)
    fp, fn = c.n_pred - tp, c.n_gt - tp
    union = tp + fp + fn
    safe = np.maximum(union, 1)
    dsb_t = np.where(union > 0, tp / safe, 1.0)  # both empty: a perfect prediction
    tp50 = tp[0]
    out = {"n_gt": int(c.n_gt), "n_pred": int(c.n_pred), "dsb": float(dsb_t.mean()),
           "dsb_t": dsb_t, "tp": tp, "fp": fp, "fn": fn,
           "loss_fp": fp / safe, "loss_fn": fn / safe,
           "loss_det_fp": (c.n_pred - tp50) / safe, "loss_det_fn": (c.n_gt - tp50) / safe,
           "loss_loc": 2.0 * (tp50 - tp) / safe}
    # missed nuclei by size
    matched_gt = np.zeros(c.n_gt, bool)
    matched_gt[gi] = True
    bins = np.digitize(c.gt_area, SIZE_BINS[1:-1])
    nb = len(SIZE_LABELS)
    out["size_n"] = np.bincount(bins, minlength=nb)
    out["size_missed"] = np.bincount(bins[~matched_gt], minlength=nb)
    out["size_iou_sum"] = np.bincount(bins[gi], weights=v, minlength=nb)
    # merges and splits
    with np.errstate(divide="ignore", invalid="ignore"):
        gt_inside = c.inter > 0.5 * c.gt_area[:, None]      # > 50 % of the nucleus in pred
        pred_inside = c.inter > 0.5 * c.pred_area[None, :]  # > 50 % of the pred in the nucleus
    per_pred = gt_inside.sum(axis=0)
    per_gt = pred_inside.sum(axis=1)
    out["merges"] = int((per_pred >= 2).sum())
    out["gt_in_merges"] = int(per_pred[per_pred >= 2].sum())
    out["splits"] = int((per_gt >= 2).sum())
    out["pred_in_splits"] = int(per_gt[per_gt >= 2].sum())
    # boundary error of matched pairs
    inter = c.inter[gi, pi]
    out.update(matched=int(gi.size), iou_sum=float(v.sum()), gt_px=int(c.gt_area[gi].sum()),
               pred_px=int(c.pred_area[pi].sum()), inter_px=int(inter.sum()))
    bd = _boundary_distance(gt, pred, c, gi, pi) if boundary_distance else (0.0, 0)
    out["bd_sum"], out["bd_count"] = bd
    # scores of matched / unmatched predictions
    ns = len(SCORE_LABELS)
    out["score_tp"] = np.zeros(ns, np.int64)
    out["score_fp"] = np.zeros(ns, np.int64)
    if scores is not None and c.n_pred:
        s = np.asarray(scores, np.float64).ravel()
        if s.size < c.pred_ids.max():
            raise ValueError(f"scores has {s.size} values but pred has id {c.pred_ids.max()}")
        ps = s[c.pred_ids - 1]
        sb = np.digitize(ps, SCORE_BINS[1:-1])
        hit = np.zeros(c.n_pred, bool)
        hit[pi] = True
        out["score_tp"] = np.bincount(sb[hit], minlength=ns)
        out["score_fp"] = np.bincount(sb[~hit], minlength=ns)
    return out


# ------------------------------------------------------------------------------- aggregation
_SUMMED = ("n_gt", "n_pred", "tp", "fp", "fn", "size_n", "size_missed", "size_iou_sum", "merges",
           "gt_in_merges", "splits", "pred_in_splits", "matched", "iou_sum", "gt_px", "pred_px",
           "inter_px", "bd_sum", "bd_count", "score_tp", "score_fp")
_MEANED = ("dsb", "dsb_t", "loss_fp", "loss_fn", "loss_det_fp", "loss_det_fn", "loss_loc")


def _ratio(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)
    return r if r.ndim else float(r)


def _aggregate(records, n_total):
    n = len(records)
    agg = {"n_images": n}
    for k in _SUMMED:
        agg[k] = np.sum([np.asarray(r[k]) for r in records], axis=0)
    for k in _MEANED:
        agg[k] = np.mean([np.asarray(r[k], np.float64) for r in records], axis=0)
    # this subset's part of the whole set's 1 - DSB
    agg["share_of_loss"] = float(np.sum([1.0 - r["dsb"] for r in records]) / max(n_total, 1))
    agg["size_recall"] = 1.0 - _ratio(agg["size_missed"], agg["size_n"])
    agg["size_mean_iou"] = _ratio(agg["size_iou_sum"], agg["size_n"] - agg["size_missed"])
    agg["mean_matched_iou"] = _ratio(agg["iou_sum"], agg["matched"])
    agg["under_fraction"] = _ratio(agg["gt_px"] - agg["inter_px"], agg["gt_px"])
    agg["over_fraction"] = _ratio(agg["pred_px"] - agg["inter_px"], agg["pred_px"])
    agg["boundary_distance_px"] = _ratio(agg["bd_sum"], agg["bd_count"])
    return agg


def summarize(records, groups=None):
    """Aggregate :func:`diagnose_image` records (each may carry ``image_id``, ``group``).

    groups: optional ``{image_id: group}`` filling a record's missing ``group``.
    Returns ``{"all": agg, "by_type": {type: agg}, "by_group": {group: agg}}``; an ``agg``
    holds the summed counts (``tp, fp, fn [10]``, size bins, merges, ...), the per-image means
    (``dsb``, ``dsb_t [10]``, the ``loss_* [10]`` splits of ``1 - DSB_t``), ``share_of_loss``
    (sum over its images of ``1 - dsb``, divided by the number of ALL images: the subsets' shares
    add up to ``1 - DSB`` of the whole set) and the derived rates (``size_recall``,
    ``mean_matched_iou``, ``under_fraction``, ``over_fraction``, ``boundary_distance_px``).
    """
    records = list(records)
    if not records:
        raise ValueError("summarize: no image records")
    groups = groups or {}
    n = len(records)
    by_group, by_type = {}, {}
    for r in records:
        g = r.get("group") or groups.get(r.get("image_id")) or "unknown"
        by_group.setdefault(g, []).append(r)
        by_type.setdefault(image_type(g), []).append(r)
    order = {t: i for i, t in enumerate(IMAGE_TYPES)}
    return {"all": _aggregate(records, n),
            "by_type": {t: _aggregate(by_type[t], n)
                        for t in sorted(by_type, key=lambda t: (order.get(t, 99), t))},
            "by_group": {g: _aggregate(by_group[g], n) for g in sorted(by_group)}}


def to_jsonable(x):
    """Arrays to lists, NaN to None (JSON has no NaN), numpy scalars to Python numbers."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x



# ------------------------------------------------------------------------------------- text
def _f(x, fmt="{:.3f}"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan".rjust(len(fmt.format(0.0)))
    return fmt.format(x)


def _threshold_table(agg):
    lines = [f"{'IoU>':>6}{'TP':>8}{'FP':>8}{'FN':>8}{'DSB_t':>8}{'lost':>8}{'by FP':>8}"
             f"{'by FN':>8}{'no det':>8}{'missed':>8}{'mask':>8}"]
    for i, t in enumerate(DSB_THRESHOLDS):
        lost = 1.0 - agg["dsb_t"][i]
        lines.append(f"{t:>6.2f}{agg['tp'][i]:>8d}{agg['fp'][i]:>8d}{agg['fn'][i]:>8d}"
                     f"{agg['dsb_t'][i]:>8.3f}{lost:>8.3f}{agg['loss_fp'][i]:>8.3f}"
                     f"{agg['loss_fn'][i]:>8.3f}{agg['loss_det_fp'][i]:>8.3f}"
                     f"{agg['loss_det_fn'][i]:>8.3f}{agg['loss_loc'][i]:>8.3f}")
    m = lambda k: float(np.mean(agg[k]))  # noqa: E731
    lines.append(f"{'mean':>6}{'':>24}{agg['dsb']:>8.3f}{1 - agg['dsb']:>8.3f}"
                 f"{m('loss_fp'):>8.3f}{m('loss_fn'):>8.3f}{m('loss_det_fp'):>8.3f}"
                 f"{m('loss_det_fn'):>8.3f}{m('loss_loc'):>8.3f}")
    return lines


def _subset_table(title, subsets):
    lines = [title, f"{'':<22}{'imgs':>5}{'DSB':>7}{'share':>7}{'byFP':>7}{'byFN':>7}"
             f"{'nodet':>7}{'missd':>7}{'mask':>7}{'GT':>7}{'pred':>7}{'rec.5':>7}{'rec<50':>7}"
             f"{'mIoU':>7}{'under':>7}{'over':>7}{'bd px':>7}{'merge':>6}{'split':>6}"]
    for name, a in subsets.items():
        m = lambda k: float(np.mean(a[k]))  # noqa: E731
        rec = a["tp"][0] / a["n_gt"] if a["n_gt"] else float("nan")
        lines.append(
            f"{name[:22]:<22}{a['n_images']:>5d}{a['dsb']:>7.3f}{a['share_of_loss']:>7.3f}"
            f"{m('loss_fp'):>7.3f}{m('loss_fn'):>7.3f}{m('loss_det_fp'):>7.3f}"
            f"{m('loss_det_fn'):>7.3f}{m('loss_loc'):>7.3f}{int(a['n_gt']):>7d}"
            f"{int(a['n_pred']):>7d}{_f(rec, '{:>7.3f}')}{_f(a['size_recall'][0], '{:>7.3f}')}"
            f"{_f(a['mean_matched_iou'], '{:>7.3f}')}{_f(a['under_fraction'], '{:>7.3f}')}"
            f"{_f(a['over_fraction'], '{:>7.3f}')}{_f(a['boundary_distance_px'], '{:>7.2f}')}"
            f"{int(a['merges']):>6d}{int(a['splits']):>6d}")
    return lines


def format_report(summary):
    """The tables of :func:`summarize` as text: per threshold (all images), by image type and
    group, missed nuclei by size, merges/splits, boundary error, scores of matched/unmatched."""
    a = summary["all"]
    lines = [f"{a['n_images']} images, {int(a['n_gt'])} GT nuclei, {int(a['n_pred'])} predicted;"
             f" DSB {a['dsb']:.4f}, lost {1 - a['dsb']:.4f}", "",
             "Per IoU threshold (counts summed; DSB_t and the losses are means over images).",
             "lost = 1 - DSB_t = by FP + by FN = no det + missed + mask, where no det = "
             "predictions matching no nucleus at IoU>0.5, missed = nuclei with no such "
             "prediction, mask = pairs matched at 0.5 but not at t (x2: one FP + one FN)"]
    lines += _threshold_table(a)
    lines += ["", "Missed nuclei by ground-truth area (px, original resolution; miss = no "
              "prediction with IoU > 0.5)",
              f"{'area':<10}{'GT':>8}{'missed':>8}{'recall':>8}{'mIoU':>8}"]
    for i, lab in enumerate(SIZE_LABELS):
        lines.append(f"{lab:<10}{int(a['size_n'][i]):>8d}{int(a['size_missed'][i]):>8d}"
                     f"{_f(a['size_recall'][i], '{:>8.3f}')}"
                     f"{_f(a['size_mean_iou'][i], '{:>8.3f}')}")
    lines += ["", f"Merges (one prediction over >50% of each of >=2 nuclei): {int(a['merges'])} "
              f"covering {int(a['gt_in_merges'])} nuclei; splits (one nucleus holding >50% of "
              f">=2 predictions): {int(a['splits'])} with {int(a['pred_in_splits'])} predictions",
              f"Matched pairs (IoU>0.5): {int(a['matched'])}, mean IoU "
              f"{_f(a['mean_matched_iou'])}, GT pixels missed (under) "
              f"{_f(a['under_fraction'])}, predicted pixels outside (over) "
              f"{_f(a['over_fraction'])}, mean boundary distance "
              f"{_f(a['boundary_distance_px'], '{:.2f}')} px"]
    if int(np.sum(a["score_tp"]) + np.sum(a["score_fp"])):
        lines += ["", f"{'score':<10}{'TP@.5':>8}{'FP@.5':>8}"]
        for i, lab in enumerate(SCORE_LABELS):
            lines.append(f"{lab:<10}{int(a['score_tp'][i]):>8d}{int(a['score_fp'][i]):>8d}")
    lines += ["", "share = the subset's part of the whole set's 1 - DSB; byFP/byFN/nodet/missd/"
              "mask = mean over thresholds of the loss splits; rec.5 = recall at IoU>0.5; "
              "rec<50 = recall of nuclei < 50 px; bd px = mean boundary distance"]
    lines += _subset_table("By image type", summary["by_type"]) + [""]
    lines += _subset_table("By image group", summary["by_group"])
    return "\n".join(lines)


def _num(x):
    """A float or float array from a summary value (JSON null -> nan)."""
    if x is None:
        return float("nan")
    a = np.asarray(x, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


def _key_figures(agg):
    """Named scalar figures of one aggregate (summary ``all`` or a subset)."""
    m = lambda k: float(np.mean(_num(agg[k])))  # noqa: E731
    size_recall = _num(agg["size_recall"])
    out = {"DSB": _num(agg["dsb"]), "lost by FP": m("loss_fp"), "lost by FN": m("loss_fn"),
           "lost: no detection": m("loss_det_fp"), "lost: missed": m("loss_det_fn"),
           "lost: mask": m("loss_loc"), "GT": _num(agg["n_gt"]), "predicted": _num(agg["n_pred"]),
           "TP@0.5": float(_num(agg["tp"])[0]), "TP@0.75": float(_num(agg["tp"])[5])}
    for lab, r in zip(SIZE_LABELS, np.atleast_1d(size_recall)):
        out[f"recall {lab} px"] = float(r)
    out.update({"merges": _num(agg["merges"]), "splits": _num(agg["splits"]),
                "matched mean IoU": _num(agg["mean_matched_iou"]),
                "under (GT px missed)": _num(agg["under_fraction"]),
                "over (pred px outside)": _num(agg["over_fraction"]),
                "boundary distance px": _num(agg["boundary_distance_px"])})
    return out


def format_comparison(before, after, names=("before", "after")):
    """Key figures of two :func:`summarize` results (or their JSON forms) side by side with the
    change: all images, then the DSB score and share of loss per image type."""
    a, b = _key_figures(before["all"]), _key_figures(after["all"])
    lines = [f"{'':<26}{names[0][:12]:>12}{names[1][:12]:>12}{'change':>10}"]
    for k in a:
        x, y = a[k], b[k]
        lines.append(f"{k:<26}{_f(x, '{:>12.4f}')}{_f(y, '{:>12.4f}')}{_f(y - x, '{:>+10.4f}')}")
    for t in sorted(set(before["by_type"]) | set(after["by_type"])):
        x = _num(before["by_type"].get(t, {}).get("dsb"))
        y = _num(after["by_type"].get(t, {}).get("dsb"))
        lines.append(f"{'DSB ' + t:<26}{_f(x, '{:>12.4f}')}{_f(y, '{:>12.4f}')}"
                     f"{_f(y - x, '{:>+10.4f}')}")
    return "\n".join(lines)
