"""PanNuke binary and multi-class panoptic quality (bPQ, mPQ; Gamper et al. 2020)."""

from __future__ import annotations

import warnings

import numpy as np

from .instance import panoptic_quality
from .labels import relabel_sequential, to_label

__all__ = ["pannuke_bpq", "pannuke_mpq", "tissue_means"]


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


def tissue_means(per_image, tissues):
    """``(overall, {tissue: mean})``: the nan-mean of the per-image values ``[N]`` of each
    tissue (first-seen order), and the nan-mean of those tissue means (PanNuke's averaging)."""
    per_image = np.asarray(per_image, np.float64)
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
            vals[i] = panoptic_quality(g, p)[0]
    return tissue_means(vals, tissues)


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
        pqs = [(panoptic_quality(gs[..., c], ps[..., c])[0] if gs[..., c].any() else np.nan)
               for c in range(n_classes)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vals[i] = np.nanmean(pqs)
    return tissue_means(vals, tissues)
