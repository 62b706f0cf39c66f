"""Label images and instance stacks: checks, conversions and run-length encoding.

A label image is ``[H, W]`` int (0 = background, every other value one nucleus; ids need
not be consecutive); an instance stack is ``[H, W, N]`` bool (or 0/1).  :func:`masks_to_label`
holds the package's one overlap rule (where stacked masks overlap, the higher score wins, and
without scores the earlier channel), so a stack and its label image score alike.  RLEs are
column-major, as COCO and Kaggle number pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_label", "check_stack", "masks_to_label", "label_to_masks", "relabel_sequential",
           "label_runs", "label_rle_counts", "instance_rles"]


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
    return _paint_ranked(m, _overlap_rank(m, scores, mode), label)


def _paint_ranked(m, rank, label, ids=None):
    """Paint the stack ``m [H, W, N]`` (bool, or any dtype: nonzero = set) into ``label [H, W]``
    (zeros): each covered pixel gets ``ids[k]`` (default ``k + 1``) of its covering channel ``k``
    of highest ``rank [N]`` (unique among the channels used); channels of negative rank are left
    out. Returns ``label``.

    One scan of the stack (``flatnonzero``, C order: pixel-major, channels ascending) and a
    maximum per covered pixel; no reordered copy of the stack is made.
    """
    n = m.shape[-1]
    rank = np.asarray(rank, np.int64)
    ids = np.arange(1, n + 1) if ids is None else np.asarray(ids)
    pix, ks = np.divmod(np.flatnonzero(m), n)
    r = rank[ks]
    if (r < 0).any():
        pix, r = pix[r >= 0], r[r >= 0]
    if pix.size == 0:
        return label
    starts = np.flatnonzero(np.r_[True, pix[1:] != pix[:-1]])
    best = np.maximum.reduceat(r, starts)  # the highest rank among each pixel's channels
    used = rank >= 0
    channel_of_rank = np.zeros(int(rank.max()) + 1, np.int64)
    channel_of_rank[rank[used]] = np.flatnonzero(used)
    label.ravel()[pix[starts]] = ids[channel_of_rank[best]]
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
