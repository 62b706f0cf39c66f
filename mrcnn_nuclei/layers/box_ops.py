"""Box math on tensors with ``keras.ops`` (the graph counterparts of ``mrcnn_nuclei.boxes``).

Boxes are (y1, x1, y2, x2). Deltas are (dy, dx, log(dh), log(dw)) relative to box centre and
size, not divided by any standard deviation (callers scale them).
"""

from __future__ import annotations

from keras import ops

__all__ = ["overlaps", "apply_box_deltas", "box_refinement", "clip_boxes", "norm_boxes",
           "denorm_boxes", "box_area"]


def box_area(boxes):
    """boxes [..., 4] -> areas [...] (no +1: normalised or exclusive pixel boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def overlaps(boxes1, boxes2):
    """IoU of every pair. boxes1 [..., N, 4], boxes2 [..., M, 4] -> [..., N, M]."""
    a = ops.expand_dims(boxes1, -2)
    b = ops.expand_dims(boxes2, -3)
    y1 = ops.maximum(a[..., 0], b[..., 0])
    x1 = ops.maximum(a[..., 1], b[..., 1])
    y2 = ops.minimum(a[..., 2], b[..., 2])
    x2 = ops.minimum(a[..., 3], b[..., 3])
    inter = ops.maximum(y2 - y1, 0.0) * ops.maximum(x2 - x1, 0.0)
    union = box_area(a) + box_area(b) - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1e-12), ops.zeros_like(inter))


def apply_box_deltas(boxes, deltas):
    """Shift and scale boxes [..., 4] by deltas [..., 4] (dy, dx, log dh, log dw) -> [..., 4]."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h + deltas[..., 0] * h
    cx = boxes[..., 1] + 0.5 * w + deltas[..., 1] * w
    h = h * ops.exp(deltas[..., 2])
    w = w * ops.exp(deltas[..., 3])
    y1 = cy - 0.5 * h
    x1 = cx - 0.5 * w
    return ops.stack([y1, x1, y1 + h, x1 + w], axis=-1)


def box_refinement(boxes, gt_boxes):
    """Deltas that turn boxes [..., 4] into gt_boxes [..., 4] -> [..., 4] (inverse of apply)."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h
    cx = boxes[..., 1] + 0.5 * w
    gh = gt_boxes[..., 2] - gt_boxes[..., 0]
    gw = gt_boxes[..., 3] - gt_boxes[..., 1]
    gcy = gt_boxes[..., 0] + 0.5 * gh
    gcx = gt_boxes[..., 1] + 0.5 * gw
    h = ops.maximum(h, 1e-8)
    w = ops.maximum(w, 1e-8)
    return ops.stack([(gcy - cy) / h, (gcx - cx) / w,
                      ops.log(ops.maximum(gh, 1e-8) / h), ops.log(ops.maximum(gw, 1e-8) / w)],
                     axis=-1)


def clip_boxes(boxes, window):
    """Clip boxes [..., 4] into window (wy1, wx1, wy2, wx2) broadcastable to [..., 4]."""
    window = ops.convert_to_tensor(window, dtype=boxes.dtype)
    lo = ops.stack([window[..., 0], window[..., 1], window[..., 0], window[..., 1]], axis=-1)
    hi = ops.stack([window[..., 2], window[..., 3], window[..., 2], window[..., 3]], axis=-1)
    return ops.minimum(ops.maximum(boxes, lo), hi)


def norm_boxes(boxes, shape):
    """Pixel boxes [..., 4] (y2/x2 exclusive) -> normalised; shape (h, w) or [..., 2]."""
    shape = ops.cast(ops.convert_to_tensor(shape), boxes.dtype)
    h, w = shape[..., 0:1], shape[..., 1:2]
    scale = ops.concatenate([h - 1, w - 1, h - 1, w - 1], axis=-1)
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype)
    return (boxes - shift) / scale


def denorm_boxes(boxes, shape):
    """Normalised boxes [..., 4] -> pixel boxes (float, rounded) for an image of shape (h, w)."""
    shape = ops.cast(ops.convert_to_tensor(shape), boxes.dtype)
    h, w = shape[..., 0:1], shape[..., 1:2]
    scale = ops.concatenate([h - 1, w - 1, h - 1, w - 1], axis=-1)
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype)
    return ops.round(boxes * scale + shift)
