"""Post-processing of predicted instances, stack/label conversions and Kaggle run-length encoding.

Conventions: instance stacks are ``[H, W, N]`` bool, label images ``[H, W]`` int (0 = background).
Kaggle DSB2018 run-length encoding numbers pixels column-major (top to bottom, then left to
right), starting at 1, and writes ``"start length start length ..."``.
"""

from __future__ import annotations

import csv
import os
import tempfile

import numpy as np
from scipy import ndimage as ndi

from .metrics import relabel_sequential, to_label

__all__ = ["resolve_overlaps", "remove_small", "fill_holes", "masks_to_label", "label_to_masks",
           "rle_encode", "rle_decode", "label_rle_counts", "submission_rows",
           "write_submission_csv"]


def _stack(masks, name="masks"):
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"{name}: expected an instance stack [H, W, N], got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise TypeError(f"{name}: an instance stack must be bool or 0/1, got dtype {m.dtype}; "
                            "threshold soft masks first (masks >= 0.5)")
        m = m.astype(bool)
    return m


def _paint(masks, priority):
    """Label ``[H, W]`` int64 with id ``k + 1`` where channel ``k`` has the highest priority."""
    h, w, n = masks.shape
    label = np.zeros((h, w), np.int64)
    if n == 0:
        return label
    order = np.argsort(priority, kind="stable")  # ascending: the last painted wins
    ys, xs, ks = np.nonzero(masks[..., order])
    flat = ys * w + xs
    last = np.ones(flat.size, bool)
    last[:-1] = flat[1:] != flat[:-1]
    label.ravel()[flat[last]] = order[ks[last]] + 1
    return label


def _unpaint(label, n):
    out = np.zeros(label.shape + (n,), bool)
    ys, xs = np.nonzero(label)
    out[ys, xs, label[ys, xs] - 1] = True
    return out


def _priority(masks, scores, mode):
    """Rank ``[N]`` int: higher wins a contested pixel; ties go to the earlier channel."""
    n = masks.shape[-1]
    if mode == "score":
        if scores is None:
            key = np.zeros(n)  # all tied: the first channel wins (detect sorts by score)
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


def masks_to_label(masks, scores=None):
    """Label image ``[H, W]`` int32 from a stack ``[H, W, N]``; channel ``k`` becomes id ``k + 1``.

    Where masks overlap the pixel goes to the higher score (``scores [N]``), or without scores to
    the earlier channel (Mask R-CNN detections come sorted by score). Ids of instances that lose
    all their pixels disappear (ids are not renumbered, so they still index ``scores``).
    """
    m = _stack(masks)
    return _paint(m, _priority(m, scores, "score")).astype(np.int32)


def label_to_masks(label, return_ids=False):
    """Instance stack ``[H, W, N]`` bool from a label image, one channel per id in ascending order.

    With ``return_ids=True`` also returns the ids ``[N]``.
    """
    lab, ids = relabel_sequential(to_label(label, "label"))
    out = _unpaint(lab, ids.size)
    return (out, ids) if return_ids else out


def resolve_overlaps(masks, scores=None, mode="score"):
    """Give every pixel covered by several masks to one instance. Returns ``[H, W, N]`` bool.

    Args:
        masks: ``[H, W, N]`` instance stack.
        scores: ``[N]`` confidences; for ``mode="score"`` the higher score wins (ties and
            ``scores=None``: the earlier channel wins).
        mode: ``"score"`` or ``"area"`` (the larger instance wins; ties: earlier channel).
    The channel count is kept (a mask may end up empty), so scores/class ids stay aligned.
    """
    m = _stack(masks)
    return _unpaint(_paint(m, _priority(m, scores, mode)), m.shape[-1])


def remove_small(masks, min_size, return_keep=False):
    """Drop instances smaller than ``min_size`` pixels.

    Args:
        masks: ``[H, W, N]`` stack (returns the kept channels) or ``[H, W]`` label image (returns
            the label image with small ids set to 0).
        min_size: minimum area in pixels (kept when ``area >= min_size``).
        return_keep: also return the bool keep vector (``[N]`` for stacks, indexed by id for
            label images).
    """
    if np.ndim(masks) == 3:
        m = _stack(masks)
        keep = m.sum(axis=(0, 1)) >= min_size
        return (m[..., keep], keep) if return_keep else m[..., keep]
    label = to_label(masks, "masks")
    areas = np.bincount(label.ravel(), minlength=1)
    keep = areas >= min_size
    keep[0] = True
    out = np.where(keep[label], label, 0).astype(np.asarray(masks).dtype)
    return (out, keep) if return_keep else out


def _boxes(m):
    """Pixel boxes ``[N, 4]`` (y1, x1, y2, x2 exclusive) of a stack; empty masks give zeros."""
    rows = m.any(axis=1)  # [H, N]
    cols = m.any(axis=0)  # [W, N]
    h, w = rows.shape[0], cols.shape[0]
    y1 = np.argmax(rows, axis=0)
    y2 = h - np.argmax(rows[::-1], axis=0)
    x1 = np.argmax(cols, axis=0)
    x2 = w - np.argmax(cols[::-1], axis=0)
    empty = ~rows.any(axis=0)
    return np.where(empty[:, None], 0, np.stack([y1, x1, y2, x2], axis=1))


def fill_holes(masks):
    """Fill the holes of every instance (``scipy.ndimage.binary_fill_holes`` on its bounding box).

    Args:
        masks: ``[H, W, N]`` stack -> filled stack (a filled hole may now overlap another
            instance lying inside it); or ``[H, W]`` label image -> label image where holes are
            filled only on background pixels.
    """
    if np.ndim(masks) == 3:
        m = _stack(masks).copy()
        for k, (y1, x1, y2, x2) in enumerate(_boxes(m)):  # one crop per instance
            if y2 > y1:
                m[y1:y2, x1:x2, k] = ndi.binary_fill_holes(m[y1:y2, x1:x2, k])
        return m
    label = to_label(masks, "masks")
    out = label.copy()
    for i, sl in enumerate(ndi.find_objects(label)):
        if sl is None:
            continue
        crop = label[sl]
        filled = ndi.binary_fill_holes(crop == i + 1)
        out[sl][filled & (crop == 0)] = i + 1
    return out.astype(np.asarray(masks).dtype)


# --------------------------------------------------------------------------- run-length encoding
def _label_runs(label):
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
    ids, owner, starts, lengths = _label_runs(label)
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


def rle_encode(mask):
    """Kaggle run-length encoding of one ``[H, W]`` mask: ``"start length ..."``.

    Pixels are numbered column-major from 1.

    An empty mask gives ``""``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask: rle_encode takes one [H, W] mask, got shape {m.shape}; "
                         "encode the channels of a stack one by one (submission_rows does this)")
    pixels = np.concatenate([[0], (m > 0).ravel(order="F").astype(np.int8), [0]])
    edges = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1  # 1-based run starts / ends+1
    starts, stops = edges[0::2], edges[1::2]
    runs = np.empty(2 * starts.size, np.int64)
    runs[0::2], runs[1::2] = starts, stops - starts
    return " ".join(map(str, runs.tolist()))


def rle_decode(rle, shape):
    """Mask ``[H, W]`` bool from a Kaggle RLE string (or sequence of ints) and ``shape=(H, W)``.

    ``""`` gives an empty mask. Raises ``ValueError`` for non-integer tokens, an odd count of
    numbers, or runs outside pixels ``1..H*W`` (1-based, column-major).
    """
    h, w = int(shape[0]), int(shape[1])
    if isinstance(rle, str):
        try:
            vals = np.array(rle.split(), dtype=np.int64)
        except ValueError:
            raise ValueError(f"rle: not a run-length string of integers: {rle[:60]!r}") from None
    else:
        vals = np.asarray(rle, dtype=np.int64).ravel()
    if vals.size % 2:
        raise ValueError(f"rle: needs start/length pairs, got {vals.size} numbers")
    starts, lengths = vals[0::2] - 1, vals[1::2]
    if vals.size and (starts.min() < 0 or lengths.min() < 0 or (starts + lengths).max() > h * w):
        raise ValueError(f"rle: runs must lie in pixels 1..{h * w} of a {h}x{w} image (1-based, "
                         "column-major)")
    delta = np.bincount(starts, minlength=h * w + 1) - \
        np.bincount(starts + lengths, minlength=h * w + 1)
    flat = np.cumsum(delta[:-1]) > 0
    return flat.reshape((w, h)).T.copy()


def submission_rows(image_id, masks):
    """Kaggle rows ``[(image_id, rle), ...]`` for one image, one per instance.

    Args: ``masks`` a label image ``[H, W]`` or a stack ``[H, W, N]`` (overlaps resolved with the
    earlier channel winning, since Kaggle forbids overlapping masks). An image without
    instances gives ``[(image_id, "")]``.
    """
    label = masks_to_label(masks) if np.ndim(masks) == 3 else to_label(masks, "masks")
    ids, owner, starts, lengths = _label_runs(label)
    if ids.size == 0:
        return [(str(image_id), "")]
    runs = np.empty(2 * owner.size, np.int64)
    runs[0::2], runs[1::2] = starts + 1, lengths
    cuts = 2 * np.flatnonzero(np.diff(owner)) + 2
    return [(str(image_id), " ".join(map(str, r.tolist()))) for r in np.split(runs, cuts)]


def write_submission_csv(path, rows):
    """Write a Kaggle submission ``ImageId,EncodedPixels`` atomically. Returns ``path``.

    Args:
        rows: iterable of ``(image_id, value)`` where value is an RLE string (``""`` for an
            image without nuclei) or a label image / stack (expanded with :func:`submission_rows`).
    """
    out = []
    for item in rows:
        if len(item) != 2:
            raise ValueError(f"rows: each row must be (image_id, rle_or_masks), got {item!r:.80}")
        image_id, value = item
        if isinstance(value, str) or value is None:
            out.append((str(image_id), value or ""))
        else:
            out.extend(submission_rows(image_id, value))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".csv.tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["ImageId", "EncodedPixels"])
            writer.writerows(out)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
