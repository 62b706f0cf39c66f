"""Post-processing of predicted instances and Kaggle run-length encoding.

Conventions: instance stacks are ``[H, W, N]`` bool, label images ``[H, W]`` int (0 = background).
The stack/label conversions (:func:`masks_to_label` with the package's one overlap rule,
:func:`label_to_masks`) and :func:`label_rle_counts` live in :mod:`mrcnn_nuclei.metrics` and are
re-exported here.
Kaggle DSB2018 run-length encoding numbers pixels column-major (top to bottom, then left to
right), starting at 1, and writes ``"start length start length ..."``.
"""

from __future__ import annotations

import csv

import numpy as np
from scipy import ndimage as ndi

from .data.image_ops import extract_bboxes
from .metrics import (check_stack, label_rle_counts, label_runs, label_to_masks,
                      masks_to_label, to_label)

__all__ = ["resolve_overlaps", "remove_small", "fill_holes", "masks_to_label", "label_to_masks",
           "rle_encode", "rle_decode", "label_rle_counts", "submission_rows",
           "write_submission_csv"]


def resolve_overlaps(masks, scores=None, mode="score"):
    """Give every pixel covered by several masks to one instance. Returns ``[H, W, N]`` bool.

    Args:
        masks: ``[H, W, N]`` instance stack.
        scores: ``[N]`` confidences; for ``mode="score"`` the higher score wins (ties and
            ``scores=None``: the earlier channel wins).
        mode: ``"score"`` or ``"area"`` (the larger instance wins; ties: earlier channel).
    The channel count is kept (a mask may end up empty), so scores/class ids stay aligned.
    """
    m = check_stack(masks)
    return label_to_masks(masks_to_label(m, scores, mode), n_instances=m.shape[-1])


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
        m = check_stack(masks)
        keep = m.sum(axis=(0, 1)) >= min_size
        return (m[..., keep], keep) if return_keep else m[..., keep]
    label = to_label(masks, "masks")
    areas = np.bincount(label.ravel(), minlength=1)
    keep = areas >= min_size
    keep[0] = True
    out = np.where(keep[label], label, 0).astype(np.asarray(masks).dtype)
    return (out, keep) if return_keep else out


def fill_holes(masks):
    """Fill the holes of every instance (``scipy.ndimage.binary_fill_holes`` on its bounding box).

    Args:
        masks: ``[H, W, N]`` stack -> filled stack (a filled hole may now overlap another
            instance lying inside it); or ``[H, W]`` label image -> label image where holes are
            filled only on background pixels.
    """
    if np.ndim(masks) == 3:
        m = check_stack(masks).copy()
        for k, (y1, x1, y2, x2) in enumerate(extract_bboxes(m)):  # one crop per instance
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
    ids, owner, starts, lengths = label_runs(label)
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
    from .fileio import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["ImageId", "EncodedPixels"])
            writer.writerows(out)

    return atomic_write(path, write)
