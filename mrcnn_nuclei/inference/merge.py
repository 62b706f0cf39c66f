"""Merge instance detections from several runs (TTA transforms, ensemble members).

Each run is a detection dict in the ``detect()`` format (``masks`` [H, W, N] bool, ``scores``
[N], ``class_ids`` [N]) optionally with ``soft_masks`` [H, W, N] float in [0, 1].
:func:`merge_instances`:

1. binarises every soft mask at ``mask_threshold`` and computes the mask IoU between all
   detections of all runs at once (sparse matrix product of the flattened masks);
2. groups greedily by score: the best ungrouped detection seeds a group, which takes from every
   OTHER run its ungrouped detection of the same class with the highest IoU >= ``iou_threshold``
   (at most one per run);
3. drops groups seen by fewer than ``min_runs`` runs (singletons suppressed);
4. averages the soft masks of a group; ``missing="exclude"`` (default) averages over the runs that
   saw the instance, ``missing="zero"`` over all runs (a missing run counts as an empty mask and a
   score of 0, a pixel-wise vote); score = the mean score the same way;
5. thresholds the averaged mask at ``mask_threshold``; where merged instances overlap, each pixel
   goes to the instance with the larger averaged value (touching nuclei stay apart); boxes are
   recomputed from the final masks.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ..boxes import compute_overlaps_masks
from ..data.image_ops import extract_bboxes

__all__ = ["merge_instances", "mask_iou_matrix", "boxes_from_masks"]


def boxes_from_masks(masks):
    """Pixel boxes of an instance stack: [H, W, N] bool -> [N, 4] int32 (y1, x1, y2, x2 excl.).

    The package's one mask-to-box: :func:`mrcnn_nuclei.data.image_ops.extract_bboxes`.
    """
    return extract_bboxes(np.asarray(masks, bool))


def mask_iou_matrix(masks_a, masks_b=None):
    """Mask IoU: [H, W, N] and [H, W, M] bool -> [N, M] float32 (``masks_b=None``: ``masks_a``).

    The package's one mask IoU, :func:`mrcnn_nuclei.boxes.compute_overlaps_masks`.
    """
    a = np.asarray(masks_a, bool)
    b = a if masks_b is None else np.asarray(masks_b, bool)
    return compute_overlaps_masks(a, b).astype(np.float32)


def _run_pixels(run, name):
    """One run -> (shape (H, W, N), pixel index [nnz], column [nnz], value [nnz] float32)."""
    if run.get("soft_masks") is not None:
        arr = np.asarray(run["soft_masks"])
    elif run.get("masks") is not None:
        arr = np.asarray(run["masks"])
    else:
        raise ValueError(f"{name}: needs 'soft_masks' [H, W, N] float or 'masks' [H, W, N] bool")
    if arr.ndim != 3:
        raise ValueError(f"{name}: masks must be [H, W, N], got shape {arr.shape}")
    flat_arr = np.ascontiguousarray(arr).reshape(-1)
    # a float32's bit pattern is non-zero exactly when the value is (+-0 aside): faster scan
    probe = flat_arr.view(np.int32) if flat_arr.dtype == np.float32 else flat_arr
    flat = np.flatnonzero(probe)
    pixel, ks = np.divmod(flat, max(arr.shape[2], 1))
    values = flat_arr[flat].astype(np.float32)
    return arr.shape, pixel, ks, values


def _empty(h, w):
    return {"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
            "scores": np.zeros(0, np.float32), "masks": np.zeros((h, w, 0), bool),
            "soft_masks": np.zeros((h, w, 0), np.float32), "n_runs": np.zeros(0, np.int32)}


def merge_instances(runs, iou_threshold=0.5, min_runs=2, mask_threshold=0.5, missing="exclude",
                    class_aware=True):
    """Merge detections of several runs -> one detect()-style dict.

    runs: list of dicts with ``scores`` [N_r], ``class_ids`` [N_r] and ``soft_masks`` [H, W, N_r]
    (float 0..1) or ``masks`` [H, W, N_r] bool, all on the same H, W.
    Returns ``rois`` [K, 4] int32, ``class_ids`` [K] int32, ``scores`` [K] float32, ``masks``
    [H, W, K] bool, ``soft_masks`` [H, W, K] float32 (averaged) and ``n_runs`` [K] int32 (how many
    runs saw each instance), sorted by score, best first.
    """
    if not runs:
        raise ValueError("merge_instances: runs is empty; pass at least one detection dict")
    if missing not in ("exclude", "zero"):
        raise ValueError(f"missing={missing!r}: use 'exclude' or 'zero'")
    n_total = len(runs)
    if not 1 <= int(min_runs) <= n_total:
        raise ValueError(f"min_runs={min_runs} must be between 1 and the number of runs "
                         f"({n_total})")
    pixels = [_run_pixels(r, f"runs[{i}]") for i, r in enumerate(runs)]
    shapes = {p[0][:2] for p in pixels}
    if len(shapes) != 1:
        raise ValueError(f"merge_instances: runs have different image sizes {sorted(shapes)}; "
                         "map every run back to the original frame first")
    h, w = shapes.pop()
    counts = [p[0][2] for p in pixels]
    scores = np.concatenate([np.asarray(r["scores"], np.float32).ravel() for r in runs])
    class_ids = np.concatenate([np.asarray(r["class_ids"], np.int32).ravel() for r in runs])
    if not (len(scores) == len(class_ids) == sum(counts)):
        raise ValueError("merge_instances: every run needs one score and class id per mask")
    run_of = np.repeat(np.arange(n_total), counts)
    m = int(sum(counts))
    if m == 0:
        return _empty(h, w)
    # all soft masks as one sparse matrix [H*W, M] (memory ~ the instances' pixels, not H*W*M)
    offsets = np.cumsum([0] + counts[:-1])
    rows = np.concatenate([p[1] for p in pixels])
    cols = np.concatenate([p[2] + o for p, o in zip(pixels, offsets)])
    vals = np.concatenate([p[3] for p in pixels])
    soft = sparse.csc_matrix((vals, (rows, cols)), shape=(h * w, m))
    on = vals >= mask_threshold
    binary = sparse.csc_matrix((np.ones(int(on.sum()), np.float32), (rows[on], cols[on])),
                               shape=(h * w, m))
    inter = np.asarray((binary.T @ binary).todense(), np.float32)
    area = np.diag(inter).copy()
    union = area[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    match = iou >= iou_threshold
    if class_aware:
        match &= class_ids[:, None] == class_ids[None, :]
    match &= run_of[:, None] != run_of[None, :]
    iou = np.where(match, iou, -1.0)

    # greedy grouping by score; loop over groups only, members chosen per run vectorised
    group = np.full(m, -1, np.int64)
    run_onehot = np.eye(n_total, dtype=bool)[run_of]              # [M, R]
    order = np.argsort(-scores, kind="stable")
    n_groups = 0
    for seed in order:
        if group[seed] >= 0:
            continue
        group[seed] = n_groups
        cand = (group < 0) & (iou[seed] >= 0)
        if cand.any():
            # best candidate per run: the highest IoU within each run's column
            per_run = np.where(cand[:, None] & run_onehot, iou[seed][:, None], -1.0)  # [M, R]
            best = per_run.argmax(0)
            ok = per_run[best, np.arange(n_total)] >= 0
            group[best[ok]] = n_groups
        n_groups += 1

    runs_per_group = np.zeros((n_groups, n_total), bool)
    runs_per_group[group, run_of] = True
    seen = runs_per_group.sum(1)
    keep_group = seen >= int(min_runs)
    if not keep_group.any():
        return _empty(h, w)
    # renumber kept groups and drop the members of the others
    new_id = np.cumsum(keep_group) - 1
    members = keep_group[group]
    gid = new_id[group[members]]
    k = int(keep_group.sum())
    seen = seen[keep_group]

    # average the soft masks per group: sparse [H*W, M] @ [M, K] membership / run count
    idx = np.flatnonzero(members)
    denom = seen.astype(np.float32) if missing == "exclude" else np.full(k, n_total, np.float32)
    weights = sparse.csc_matrix((1.0 / denom[gid], (idx, gid)), shape=(m, k))
    avg = np.asarray((soft @ weights).todense(), np.float32).reshape(h, w, k)
    mean_score = (np.bincount(gid, scores[idx], minlength=k) / denom).astype(np.float32)
    srt = np.argsort(gid, kind="stable")
    idx, gid_sorted = idx[srt], gid[srt]
    starts = np.flatnonzero(np.r_[True, np.diff(gid_sorted) > 0])
    # class of a group: groups are class-pure when class_aware
    cls = class_ids[idx[starts]]
    if not class_aware:
        # majority class over members, ties to the lower id
        counts = np.zeros((k, int(class_ids.max()) + 1), np.int64)
        np.add.at(counts, (gid_sorted, class_ids[idx]), 1)
        cls = counts.argmax(1).astype(np.int32)

    # threshold, then give each contested pixel to the instance with the larger average
    # (the pixel's largest average decides; below the threshold no instance takes it)
    winner = avg.argmax(-1)
    best = np.take_along_axis(avg, winner[..., None], -1)[..., 0]
    ys, xs = np.nonzero(best >= mask_threshold)
    masks = np.zeros((h, w, k), bool)
    masks[ys, xs, winner[ys, xs]] = True
    nonempty = masks.any((0, 1))
    order = np.argsort(-mean_score[nonempty], kind="stable")
    sel = np.flatnonzero(nonempty)[order]
    masks, avg = masks[..., sel], avg[..., sel]
    return {"rois": boxes_from_masks(masks), "class_ids": cls[sel].astype(np.int32),
            "scores": mean_score[sel], "masks": masks, "soft_masks": avg,
            "n_runs": seen[sel].astype(np.int32)}
