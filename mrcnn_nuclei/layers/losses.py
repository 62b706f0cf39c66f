"""The five Mask R-CNN losses with ``keras.ops``; each returns a scalar and is 0 (never NaN)
when there is nothing to learn from (no anchors / no positive ROIs)."""

from __future__ import annotations

from keras import ops

__all__ = ["smooth_l1", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
           "mrcnn_bbox_loss", "mrcnn_mask_loss", "LOSS_NAMES"]

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")


def smooth_l1(diff):
    """Elementwise smooth L1 (Huber with delta 1): 0.5 d^2 if |d| < 1 else |d| - 0.5."""
    a = ops.abs(diff)
    return ops.where(a < 1.0, 0.5 * diff * diff, a - 0.5)


def _safe_mean(total, count):
    count = ops.cast(count, "float32")
    return ops.where(count > 0, total / ops.maximum(count, 1.0), 0.0)


def _xent_from_logits(logits, labels):
    """Sparse softmax cross entropy: logits [..., K], labels [...] int -> [...]."""
    logp = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    return -ops.take_along_axis(logp, ops.cast(labels, "int32")[..., None], axis=-1)[..., 0]


def rpn_class_loss(rpn_match, rpn_class_logits):
    """rpn_match [B, A, 1] or [B, A] (1, -1, 0 neutral); logits [B, A, 2] -> mean CE over
    the non-neutral anchors."""
    match = ops.cast(ops.reshape(rpn_match, ops.shape(rpn_class_logits)[:2]), "int32")
    active = ops.cast(ops.not_equal(match, 0), "float32")
    labels = ops.cast(ops.equal(match, 1), "int32")
    ce = _xent_from_logits(ops.cast(rpn_class_logits, "float32"), labels)
    return _safe_mean(ops.sum(ce * active), ops.sum(active))


def rpn_bbox_loss(target_bbox, rpn_match, rpn_bbox):
    """Smooth L1 between rpn_bbox [B, A, 4] at the positive anchors and target_bbox [B, K, 4]
    (row j = the j-th positive anchor in anchor order), mean over the used elements."""
    match = ops.reshape(rpn_match, ops.shape(rpn_bbox)[:2])
    pos = ops.cast(ops.equal(match, 1), "int32")
    rank = ops.cumsum(pos, axis=1) - 1
    k = target_bbox.shape[1]
    used = (pos > 0) & (rank < k)
    rank = ops.clip(rank, 0, k - 1)
    tgt = ops.take_along_axis(ops.cast(target_bbox, "float32"), rank[..., None], axis=1)
    loss = ops.sum(smooth_l1(ops.cast(rpn_bbox, "float32") - tgt), axis=-1)
    usedf = ops.cast(used, "float32")
    return _safe_mean(ops.sum(loss * usedf), 4.0 * ops.sum(usedf))


def mrcnn_class_loss(target_class_ids, pred_class_logits, active_class_ids):
    """CE of ROI classification; target_class_ids [B, T], logits [B, T, K], active_class_ids
    [B, K] (1 = class of the image's dataset). ROIs whose predicted class is inactive are
    ignored; mean over the counted ROIs."""
    logits = ops.cast(pred_class_logits, "float32")
    pred = ops.cast(ops.argmax(logits, axis=-1), "int32")
    active = ops.take_along_axis(ops.cast(active_class_ids, "float32"), pred, axis=1)
    ce = _xent_from_logits(logits, target_class_ids)
    return _safe_mean(ops.sum(ce * active), ops.sum(active))


def mrcnn_bbox_loss(target_bbox, target_class_ids, pred_bbox):
    """Smooth L1 on the true class's deltas of positive ROIs; target_bbox [B, T, 4],
    target_class_ids [B, T], pred_bbox [B, T, K, 4]; mean over elements."""
    cls = ops.cast(target_class_ids, "int32")
    pred = ops.take_along_axis(ops.cast(pred_bbox, "float32"),
                               ops.maximum(cls, 0)[..., None, None], axis=2)[:, :, 0]
    pos = ops.cast(cls > 0, "float32")
    loss = ops.sum(smooth_l1(ops.cast(target_bbox, "float32") - pred), axis=-1)
    return _safe_mean(ops.sum(loss * pos), 4.0 * ops.sum(pos))


def mrcnn_mask_loss(target_masks, target_class_ids, pred_masks):
    """Binary CE on the true class's mask of positive ROIs; target_masks [B, T, h, w],
    target_class_ids [B, T], pred_masks [B, T, h, w, K] probabilities; mean over pixels."""
    cls = ops.cast(target_class_ids, "int32")
    pred = ops.take_along_axis(ops.cast(pred_masks, "float32"),
                               ops.maximum(cls, 0)[..., None, None, None], axis=4)[..., 0]
    y = ops.cast(target_masks, "float32")
    p = ops.clip(pred, 1e-7, 1.0 - 1e-7)
    bce = -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
    pos = ops.cast(cls > 0, "float32")
    hw = float(pred.shape[2] * pred.shape[3])
    return _safe_mean(ops.sum(ops.sum(bce, axis=(2, 3)) * pos), hw * ops.sum(pos))
