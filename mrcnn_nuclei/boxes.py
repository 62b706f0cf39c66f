"""Box geometry and anchors (NumPy).

Conventions used everywhere in mrcnn_nuclei:

* A box is ``(y1, x1, y2, x2)``.  Pixel boxes have ``y2``/``x2`` exclusive: a mask whose last row is
  ``r`` has ``y2 = r + 1`` (as returned by :func:`mrcnn_nuclei.data.image_ops.extract_bboxes`).
* Normalised boxes (what the graph works with) are produced by
  :func:`mrcnn_nuclei.data.image_ops.norm_boxes`:
  ``(y1, x1, y2 - 1, x2 - 1) / (h - 1, w - 1, h - 1, w - 1)``.
* Box deltas are ``(dy, dx, log(dh), log(dw))``: centre shift divided by the reference box size and
  log size ratio, *not* divided by ``BBOX_STD_DEV`` (callers do that).
* Anchors are pixel boxes of the molded image, in the order level, y, x, ratio (see
  :func:`generate_pyramid_anchors`).

Everything here is vectorised; no Python loop runs over boxes.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse

__all__ = ["compute_iou", "compute_overlaps", "compute_overlaps_masks", "box_refinement",
           "apply_box_deltas", "generate_anchors", "generate_pyramid_anchors", "get_anchors"]


def _as_boxes(boxes, name):
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape [N, 4] as (y1, x1, y2, x2), "
                         f"got shape {arr.shape}; reshape with boxes.reshape(-1, 4)")
    return arr


def _areas(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box with many boxes.

    box: [4] (y1, x1, y2, x2); boxes: [N, 4]; box_area: float; boxes_area: [N].
    Returns [N] float IoU (0 where the union is empty).
    """
    box = np.asarray(box)
    boxes = _as_boxes(boxes, "compute_iou(boxes)")
    y1 = np.maximum(box[0], boxes[:, 0])
    x1 = np.maximum(box[1], boxes[:, 1])
    y2 = np.minimum(box[2], boxes[:, 2])
    x2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = box_area + np.asarray(boxes_area) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def compute_overlaps(boxes1, boxes2):
    """Pairwise IoU of two box sets.

    boxes1: [N1, 4]; boxes2: [N2, 4] (y1, x1, y2, x2).  Returns [N1, N2] float IoU.
    Memory is N1 * N2 floats; for very large sets see ``data.targets`` (sparse pairs).
    """
    b1 = _as_boxes(boxes1, "compute_overlaps(boxes1)").astype(np.float64, copy=False)
    b2 = _as_boxes(boxes2, "compute_overlaps(boxes2)").astype(np.float64, copy=False)
    y1 = np.maximum(b1[:, None, 0], b2[None, :, 0])
    x1 = np.maximum(b1[:, None, 1], b2[None, :, 1])
    y2 = np.minimum(b1[:, None, 2], b2[None, :, 2])
    x2 = np.minimum(b1[:, None, 3], b2[None, :, 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = _areas(b1)[:, None] + _areas(b2)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def compute_overlaps_masks(masks1, masks2):
    """Pairwise IoU of two instance-mask stacks (the package's one mask IoU).

    masks1: [H, W, N1]; masks2: [H, W, N2].  A pixel is inside a mask when its value is > 0.5
    (Matterport's rule: bool and 0/1 masks as they are, soft masks thresholded at 0.5).  Masks
    may overlap.  Returns [N1, N2] float64 IoU (0 where both masks are empty).  Uses sparse
    products of the foreground pixel sets, so memory follows the instances' pixels, not
    H * W * N.
    """
    m1 = np.asarray(masks1)
    m2 = np.asarray(masks2)
    if m1.ndim != 3 or m2.ndim != 3 or m1.shape[:2] != m2.shape[:2]:
        raise ValueError("compute_overlaps_masks: expected two [H, W, N] stacks of the same H, W; "
                         f"got {m1.shape} and {m2.shape}")
    n1, n2 = m1.shape[-1], m2.shape[-1]
    if n1 == 0 or n2 == 0:
        return np.zeros((n1, n2))

    def columns(m):  # [H*W, N] sparse 0/1 matrix of the inside pixels
        pix, k = np.nonzero(m.reshape(-1, m.shape[-1]) > 0.5)
        return sparse.csc_matrix((np.ones(pix.size), (pix, k)),
                                 shape=(m.shape[0] * m.shape[1], m.shape[-1]))

    s1, s2 = columns(m1), columns(m2)
    inter = np.asarray((s1.T @ s2).todense())
    a1 = np.asarray(s1.sum(axis=0)).ravel()
    a2 = np.asarray(s2.sum(axis=0)).ravel()
    union = a1[:, None] + a2[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_refinement(box, gt_box):
    """Deltas that turn ``box`` into ``gt_box``.

    box, gt_box: [N, 4] (y1, x1, y2, x2).  Returns [N, 4] float32 (dy, dx, log(dh), log(dw)),
    with dy, dx the centre shift divided by the box height/width (not std-normalised).
    """
    box = _as_boxes(box, "box_refinement(box)").astype(np.float64)
    gt_box = _as_boxes(gt_box, "box_refinement(gt_box)").astype(np.float64)
    h = box[:, 2] - box[:, 0]
    w = box[:, 3] - box[:, 1]
    gh = gt_box[:, 2] - gt_box[:, 0]
    gw = gt_box[:, 3] - gt_box[:, 1]
    if np.any(h <= 0) or np.any(w <= 0) or np.any(gh <= 0) or np.any(gw <= 0):
        raise ValueError("box_refinement: every box and gt_box needs y2 > y1 and x2 > x1 "
                         "(drop empty boxes before computing deltas)")
    cy = box[:, 0] + 0.5 * h
    cx = box[:, 1] + 0.5 * w
    gcy = gt_box[:, 0] + 0.5 * gh
    gcx = gt_box[:, 1] + 0.5 * gw
    return np.stack([(gcy - cy) / h, (gcx - cx) / w, np.log(gh / h), np.log(gw / w)],
                    axis=1).astype(np.float32)


def apply_box_deltas(boxes, deltas):
    """Apply (dy, dx, log(dh), log(dw)) deltas; the inverse of :func:`box_refinement`.

    boxes: [N, 4]; deltas: [N, 4] (not std-normalised).  Returns [N, 4] float (same float dtype as
    ``boxes`` if floating, else float64).
    """
    boxes = _as_boxes(boxes, "apply_box_deltas(boxes)")
    deltas = _as_boxes(deltas, "apply_box_deltas(deltas)")
    dtype = boxes.dtype if np.issubdtype(boxes.dtype, np.floating) else np.float64
    boxes = boxes.astype(dtype)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    cy = boxes[:, 0] + 0.5 * h + deltas[:, 0] * h
    cx = boxes[:, 1] + 0.5 * w + deltas[:, 1] * w
    h = h * np.exp(deltas[:, 2])
    w = w * np.exp(deltas[:, 3])
    y1 = cy - 0.5 * h
    x1 = cx - 0.5 * w
    return np.stack([y1, x1, y1 + h, x1 + w], axis=1).astype(dtype)


def generate_anchors(scales, ratios, shape, feature_stride, anchor_stride):
    """Anchors of one feature map, in pixels of the input image.

    scales: one size or a sequence (square-root area in pixels); ratios: sequence of width/height;
    shape: (h, w) of the feature map; feature_stride: pixels per feature cell; anchor_stride: put an
    anchor on every ``anchor_stride``-th cell.  Anchor centres are at ``(i * feature_stride,
    j * feature_stride)`` for cell (i, j) (Matterport's grid).  Returns [h' * w' * R * S, 4] float64
    ordered y, x, then ratio, then scale (fastest).
    """
    scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    ratios = np.atleast_1d(np.asarray(ratios, dtype=np.float64))
    if np.any(ratios <= 0) or np.any(scales <= 0):
        raise ValueError(f"generate_anchors: scales {scales} and ratios {ratios} must be positive")
    # per-position shapes: ratio-major, scale fastest
    r = np.repeat(ratios, len(scales))
    s = np.tile(scales, len(ratios))
    heights = s / np.sqrt(r)
    widths = s * np.sqrt(r)
    ys = np.arange(0, int(shape[0]), anchor_stride) * float(feature_stride)
    xs = np.arange(0, int(shape[1]), anchor_stride) * float(feature_stride)
    k = len(heights)
    cy = np.broadcast_to(ys[:, None, None], (len(ys), len(xs), k))
    cx = np.broadcast_to(xs[None, :, None], (len(ys), len(xs), k))
    hh = np.broadcast_to(heights[None, None, :], (len(ys), len(xs), k))
    ww = np.broadcast_to(widths[None, None, :], (len(ys), len(xs), k))
    out = np.stack([cy - 0.5 * hh, cx - 0.5 * ww, cy + 0.5 * hh, cx + 0.5 * ww], axis=-1)
    return out.reshape(-1, 4)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """Anchors of all pyramid levels, concatenated.

    scales: one scale per level (e.g. RPN_ANCHOR_SCALES); ratios: RPN_ANCHOR_RATIOS;
    feature_shapes: [L, 2] (h, w) per level; feature_strides: [L] pixels per cell;
    anchor_stride: int.
    Returns [A, 4] float64 pixel anchors ordered level, y, x, ratio: exactly the order in which an
    RPN head emits its outputs when it reshapes a level's [H, W, ratios * k] convolution output to
    [H * W * ratios, k] and concatenates the levels in pyramid order (P2 ... P6).
    """
    feature_shapes = np.asarray(feature_shapes)
    if not (len(scales) == len(feature_shapes) == len(feature_strides)):
        raise ValueError("generate_pyramid_anchors: need one scale, one feature shape and one "
                         f"stride per level; got {len(scales)} scales, {len(feature_shapes)} shapes, "
                         f"{len(feature_strides)} strides")
    parts = [generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i],
                              anchor_stride)
             for i in range(len(scales))]  # loop over pyramid levels (5), not boxes
    return np.concatenate(parts, axis=0)


@functools.lru_cache(maxsize=32)
def _cached_anchors(scales, ratios, shapes, strides, anchor_stride):
    anchors = generate_pyramid_anchors(scales, ratios, np.array(shapes), strides,
                                       anchor_stride).astype(np.float32)
    anchors.setflags(write=False)
    return anchors


def get_anchors(config, image_shape):
    """Pixel anchors for a molded image of ``image_shape`` (H, W[, C]), cached.

    Uses ``config.backbone_shapes(image_shape)``, RPN_ANCHOR_SCALES, RPN_ANCHOR_RATIOS,
    BACKBONE_STRIDES and RPN_ANCHOR_STRIDE.  Returns a read-only [A, 4] float32 array (shared
    between calls with the same settings and shape; copy it before modifying).  Normalise with
    ``image_ops.norm_boxes(anchors, (H, W))`` for the graph.
    """
    shape = tuple(int(v) for v in np.asarray(image_shape)[:2])
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"get_anchors: image_shape must be (H, W[, C]) with H, W >= 1, "
                         f"got {image_shape}")
    shapes = tuple(tuple(int(v) for v in row) for row in config.backbone_shapes(shape))
    key = (tuple(float(s) for s in config.RPN_ANCHOR_SCALES),
           tuple(float(r) for r in config.RPN_ANCHOR_RATIOS),
           shapes,
           tuple(int(s) for s in config.BACKBONE_STRIDES),
           int(config.RPN_ANCHOR_STRIDE))
    return _cached_anchors(*key)
