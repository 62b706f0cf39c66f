"""RPN training targets (NumPy, vectorised, sparse in memory).

:func:`build_rpn_targets` follows Matterport's rules:

1. Crowd boxes (negative class ids) are set aside; an anchor overlapping any crowd box with
   IoU >= 0.001 is never negative.  Padding boxes (class id 0) are ignored.
2. IoU >= 0.7 with some GT box: positive; max IoU < 0.3: negative; otherwise neutral.
3. Each GT box's best anchor (argmax over its IoU column; the lowest anchor index on ties) is
   positive, so every GT box has at least one anchor.  A GT box that overlaps no anchor at all
   gets none (Matterport would then mark every zero-IoU anchor positive, a known quirk).
4. Balance: at most RPN_TRAIN_ANCHORS_PER_IMAGE // 2 positives (random subset kept, the others
   become neutral); negatives are subsampled so positives + negatives ==
   RPN_TRAIN_ANCHORS_PER_IMAGE when there are enough.
5. rpn_bbox holds ``box_refinement(anchor, gt) / RPN_BBOX_STD_DEV`` of the kept positives in
   anchor order, zero-padded to RPN_TRAIN_ANCHORS_PER_IMAGE rows.

IoU is only computed for (anchor, box) pairs that can intersect, so memory stays at a few MB even
with ~260k anchors and hundreds of boxes.  Two ways to find those pairs, same result:

* anchors from ``boxes.get_anchors(config, image_shape)`` (pass ``image_shape``): the anchors lie
  on known grids, so for each (level, anchor shape, box) the intersecting anchors form a
  rectangle of grid cells, enumerated directly (about 60k pairs for 200 nuclei on a 512 crop);
* any other anchors: sort the boxes by x1 and sweep, then test y (chunked).
"""

from __future__ import annotations

import functools

import numpy as np

from mrcnn_nuclei.boxes import box_refinement, get_anchors

__all__ = ["match_anchors", "build_rpn_targets", "overlap_pairs", "grid_overlap_pairs",
           "POSITIVE_IOU", "NEGATIVE_IOU", "CROWD_IOU"]

POSITIVE_IOU = 0.7
NEGATIVE_IOU = 0.3
CROWD_IOU = 0.001
_PAIRS_PER_CHUNK = 1 << 21


def overlap_pairs(anchors, boxes):
    """All (anchor, box) pairs with a positive intersection, and their IoU.

    anchors: [A, 4]; boxes: [G, 4] (y1, x1, y2, x2).  Returns anchor_idx [P] int64 (sorted
    ascending), box_idx [P] int64, iou [P] float64.  Pairs with zero IoU are absent.
    """
    anchors = np.asarray(anchors, np.float64)
    boxes = np.asarray(boxes, np.float64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if len(anchors) == 0 or len(boxes) == 0:
        return empty
    order = np.argsort(boxes[:, 1], kind="stable")
    sb = boxes[order]
    max_w = float(np.max(sb[:, 3] - sb[:, 1]))
    # box j can overlap anchor a in x only if a.x1 - max_w < b.x1 < a.x2
    lo = np.searchsorted(sb[:, 1], anchors[:, 1] - max_w, side="right")
    hi = np.searchsorted(sb[:, 1], anchors[:, 3], side="left")
    counts = np.maximum(hi - lo, 0)
    cum = np.cumsum(counts)
    total = int(cum[-1]) if len(cum) else 0
    if total == 0:
        return empty
    area_b = (sb[:, 2] - sb[:, 0]) * (sb[:, 3] - sb[:, 1])
    area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    # chunk boundaries over anchors so each chunk expands to at most _PAIRS_PER_CHUNK pairs
    bounds = np.searchsorted(cum, np.arange(_PAIRS_PER_CHUNK, total, _PAIRS_PER_CHUNK), side="left")
    edges = np.unique(np.concatenate([[0], bounds + 1, [len(anchors)]]))
    out_a, out_b, out_iou = [], [], []
    for s, e in zip(edges[:-1], edges[1:]):  # a handful of memory chunks, not boxes
        c = counts[s:e]
        n = int(c.sum())
        if n == 0:
            continue
        a_idx = np.repeat(np.arange(s, e), c)
        starts = np.cumsum(c) - c
        pos = lo[a_idx] + (np.arange(n) - np.repeat(starts, c))
        ay1, ax1, ay2, ax2 = (anchors[a_idx, k] for k in range(4))
        by1, bx1, by2, bx2 = (sb[pos, k] for k in range(4))
        ih = np.minimum(ay2, by2) - np.maximum(ay1, by1)
        iw = np.minimum(ax2, bx2) - np.maximum(ax1, bx1)
        keep = (ih > 0) & (iw > 0)
        inter = ih[keep] * iw[keep]
        a_k = a_idx[keep]
        p_k = pos[keep]
        union = area_a[a_k] + area_b[p_k] - inter
        out_a.append(a_k)
        out_b.append(order[p_k])
        out_iou.append(inter / union)
    if not out_a:
        return empty
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_iou)


@functools.lru_cache(maxsize=16)
def _grid_layout(scales, ratios, shapes, strides, anchor_stride):
    """Per anchor group (level, ratio, scale): offset, position count, step, h, w, nx, ny, K."""
    rows = []
    offset = 0
    for lvl, (fh, fw) in enumerate(shapes):
        sc = np.atleast_1d(np.asarray(scales[lvl], np.float64))
        r = np.repeat(np.asarray(ratios, np.float64), len(sc))
        s = np.tile(sc, len(ratios))
        heights, widths = s / np.sqrt(r), s * np.sqrt(r)
        ny = len(range(0, fh, anchor_stride))
        nx = len(range(0, fw, anchor_stride))
        k = len(heights)
        step = float(anchor_stride * strides[lvl])
        for j in range(k):  # a few anchor shapes per level, not boxes
            rows.append((offset + j, k, step, heights[j], widths[j], nx, ny))
        offset += ny * nx * k
    return np.array(rows, np.float64), offset


def _layout_key(config, image_shape):
    shape = tuple(int(v) for v in np.asarray(image_shape)[:2])
    return (tuple(config.RPN_ANCHOR_SCALES), tuple(float(r) for r in config.RPN_ANCHOR_RATIOS),
            tuple(tuple(int(v) for v in row) for row in config.backbone_shapes(shape)),
            tuple(int(s) for s in config.BACKBONE_STRIDES), int(config.RPN_ANCHOR_STRIDE))


def grid_overlap_pairs(anchors, boxes, config, image_shape):
    """:func:`overlap_pairs` for ``anchors = boxes.get_anchors(config, image_shape)``, using the
    anchor grids instead of a sweep.  Returns anchor_idx [P] (sorted), box_idx [P], iou [P]."""
    anchors = np.asarray(anchors)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    layout, count = _grid_layout(*_layout_key(config, image_shape))
    if count != len(anchors):
        raise ValueError(f"grid_overlap_pairs: {len(anchors)} anchors but the config's grid for "
                         f"{tuple(image_shape)[:2]} has {count}; pass the get_anchors() output")
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if len(boxes) == 0:
        return empty
    first, k, step, ah, aw, nx, ny = (layout[:, i:i + 1] for i in range(7))  # [S, 1]
    # centres c = i * step with y1 - h/2 < c < y2 + h/2; the 1e-6 cell margin only admits extra
    # candidates (filtered by the exact intersection test below), never loses one to rounding
    eps = 1e-6
    iy0 = np.clip(np.floor((boxes[None, :, 0] - ah / 2) / step - eps) + 1, 0, ny)
    iy1 = np.clip(np.ceil((boxes[None, :, 2] + ah / 2) / step + eps) - 1, -1, ny - 1)
    ix0 = np.clip(np.floor((boxes[None, :, 1] - aw / 2) / step - eps) + 1, 0, nx)
    ix1 = np.clip(np.ceil((boxes[None, :, 3] + aw / 2) / step + eps) - 1, -1, nx - 1)
    ncols = np.maximum(ix1 - ix0 + 1, 0).astype(np.int64)
    nrows = np.maximum(iy1 - iy0 + 1, 0).astype(np.int64)
    counts = (nrows * ncols).ravel()  # [S * G]
    total = int(counts.sum())
    if total == 0:
        return empty
    grp = np.repeat(np.arange(counts.size), counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    g_s, g_b = np.divmod(grp, len(boxes))
    nc = ncols.ravel()[grp]
    iy = iy0.ravel()[grp].astype(np.int64) + local // nc
    ix = ix0.ravel()[grp].astype(np.int64) + local % nc
    lay = layout[g_s]
    a_idx = lay[:, 0].astype(np.int64) + (iy * lay[:, 5].astype(np.int64) + ix) * \
        lay[:, 1].astype(np.int64)
    return _pair_iou(anchors.astype(np.float64, copy=False), boxes, a_idx, g_b, sort=True)


def _pair_iou(anchors, boxes, a_idx, b_idx, sort):
    a = anchors[a_idx]
    b = boxes[b_idx]
    ih = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    iw = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    keep = np.flatnonzero((ih > 0) & (iw > 0))
    a, b, ih, iw = a[keep], b[keep], ih[keep], iw[keep]
    a_idx, b_idx = a_idx[keep], b_idx[keep]
    inter = ih * iw
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) \
        - inter
    iou = inter / union
    if sort:
        order = np.argsort(a_idx * (int(b_idx.max()) + 1) + b_idx, kind="stable")
        a_idx, b_idx, iou = a_idx[order], b_idx[order], iou[order]
    return a_idx, b_idx, iou


def _per_anchor_max(n_anchors, a_idx, b_idx, iou):
    """Max IoU per anchor [A] and the lowest box index achieving it [A] (0 when no overlap)."""
    best = np.zeros(n_anchors, np.float64)
    arg = np.zeros(n_anchors, np.int64)
    if len(a_idx) == 0:
        return best, arg
    starts = np.flatnonzero(np.r_[True, a_idx[1:] != a_idx[:-1]])
    uniq = a_idx[starts]
    mx = np.maximum.reduceat(iou, starts)
    best[uniq] = mx
    is_max = iou == np.repeat(mx, np.diff(np.r_[starts, len(a_idx)]))
    cand = np.where(is_max, b_idx, np.iinfo(np.int64).max)
    arg[uniq] = np.minimum.reduceat(cand, starts)
    return best, arg


def _split_gt(gt_class_ids, gt_boxes):
    ids = np.asarray(gt_class_ids).reshape(-1)
    boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4) if np.size(gt_boxes) else \
        np.zeros((0, 4))
    if len(ids) != len(boxes):
        raise ValueError(f"build_rpn_targets: gt_class_ids has {len(ids)} entries but gt_boxes "
                         f"has {len(boxes)} rows; they must describe the same instances")
    return ids, boxes


def _pair_finder(anchors, config, image_shape):
    """Grid enumeration when anchors are the config's anchors for image_shape, else a sweep."""
    if config is not None and image_shape is not None:
        ref = get_anchors(config, image_shape)
        if anchors is ref or (anchors.shape == ref.shape and np.array_equal(anchors, ref)):
            return lambda a, b: grid_overlap_pairs(a, b, config, image_shape)
    return overlap_pairs


def match_anchors(anchors, gt_class_ids, gt_boxes, config=None, image_shape=None,
                  positive_iou=POSITIVE_IOU, negative_iou=NEGATIVE_IOU):
    """Anchor labels before sampling.

    anchors: [A, 4] pixels; gt_class_ids: [G] (negative = crowd, 0 = padding, ignored);
    gt_boxes: [G, 4] pixels; config, image_shape: optional, enable the fast grid enumeration
    when anchors == get_anchors(config, image_shape).  Returns rpn_match [A] int32 (1 / -1 / 0)
    and anchor_gt [A] int64, the index into gt_boxes of each anchor's best non-crowd box (-1
    where it overlaps none).
    """
    anchors = np.asarray(anchors)
    if anchors.ndim != 2 or anchors.shape[1] != 4:
        raise ValueError(f"match_anchors: anchors must be [A, 4], got shape {anchors.shape}")
    ids, boxes = _split_gt(gt_class_ids, gt_boxes)
    pairs = _pair_finder(anchors, config, image_shape)
    n = len(anchors)
    rpn_match = np.zeros(n, np.int32)
    anchor_gt = np.full(n, -1, np.int64)

    crowd = np.flatnonzero(ids < 0)
    if len(crowd):
        ca, _, ciou = pairs(anchors, boxes[crowd])
        crowd_max = np.zeros(n)
        np.maximum.at(crowd_max, ca, ciou)
        no_crowd = crowd_max < CROWD_IOU
    else:
        no_crowd = np.ones(n, bool)

    real = np.flatnonzero(ids > 0)
    a_idx, b_local, iou = pairs(anchors, boxes[real])
    best, arg = _per_anchor_max(n, a_idx, b_local, iou)
    rpn_match[(best < negative_iou) & no_crowd] = -1
    if len(a_idx):
        gt_max = np.zeros(len(real))
        np.maximum.at(gt_max, b_local, iou)
        sel = (iou == gt_max[b_local]) & (iou > 0)
        gt_best = np.full(len(real), n, np.int64)
        np.minimum.at(gt_best, b_local[sel], a_idx[sel])
        gt_best = gt_best[gt_best < n]
        rpn_match[gt_best] = 1
    rpn_match[best >= positive_iou] = 1
    has = best > 0
    anchor_gt[has] = real[arg[has]]
    return rpn_match, anchor_gt


def build_rpn_targets(anchors, gt_class_ids, gt_boxes, config, rng=None, sample=True,
                      image_shape=None):
    """RPN targets for one image.

    anchors: [A, 4] pixel anchors (``boxes.get_anchors``); gt_class_ids: [G] int (negative =
    crowd); gt_boxes: [G, 4] pixel boxes; config: uses RPN_TRAIN_ANCHORS_PER_IMAGE and
    RPN_BBOX_STD_DEV; rng: ``np.random.Generator`` for the subsampling; image_shape: (H, W) of
    the molded image, enables the fast grid pair search when anchors are get_anchors(config, H, W).
    Returns rpn_match [A] int32 (1 positive, -1 negative, 0 neutral) and rpn_bbox
    [RPN_TRAIN_ANCHORS_PER_IMAGE, 4] float32 (std-normalised deltas of the positives in anchor
    order, zero padded).  With ``sample=False`` nothing is subsampled and rpn_bbox has one row per
    positive anchor (for tests and analysis).  An image without GT gets only negatives.
    """
    rng = np.random.default_rng() if rng is None else rng
    total = int(config.RPN_TRAIN_ANCHORS_PER_IMAGE)
    anchors = np.asarray(anchors)
    rpn_match, anchor_gt = match_anchors(anchors, gt_class_ids, gt_boxes, config, image_shape)
    _, boxes = _split_gt(gt_class_ids, gt_boxes)
    if sample:
        pos = np.flatnonzero(rpn_match == 1)
        extra = len(pos) - total // 2
        if extra > 0:
            rpn_match[rng.choice(pos, extra, replace=False)] = 0
        n_pos = int(np.sum(rpn_match == 1))
        neg = np.flatnonzero(rpn_match == -1)
        extra = len(neg) - (total - n_pos)
        if extra > 0:
            rpn_match[rng.choice(neg, extra, replace=False)] = 0
    pos = np.flatnonzero(rpn_match == 1)
    rows = total if sample else len(pos)
    rpn_bbox = np.zeros((rows, 4), np.float32)
    if len(pos):
        deltas = box_refinement(anchors[pos].astype(np.float64), boxes[anchor_gt[pos]])
        rpn_bbox[:len(pos)] = deltas / np.asarray(config.RPN_BBOX_STD_DEV, np.float32)
    return rpn_match, rpn_bbox
