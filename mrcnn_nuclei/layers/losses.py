"""The five Mask R-CNN losses with ``keras.ops``; each returns a scalar and is 0 (never NaN)
when there is nothing to learn from (no anchors / no positive ROIs).

Every loss is a ratio of a masked sum to a count (anchors, ROIs, box coordinates or mask
pixels).  ``reduction`` says over what the ratio is taken (``Config.LOSS_REDUCTION``):

* ``"batch"`` (Matterport, default): one ratio over the whole batch, sum of all terms / all
  counts, so an image with many positives weighs more.  Under ``tf.distribute`` the count is
  summed over the replicas (:func:`mrcnn_nuclei.distribute.sum_over_replicas`) and each replica
  returns ``replicas * its terms / global count``: the mean over replicas (what Keras and the
  summed, 1/replicas-scaled gradients see) is the whole-batch loss, whatever image each replica
  holds.  On JAX the data-parallel step is one program over the global batch: nothing to do.
* ``"image"``: one ratio per image (0 for an image with nothing to count), then the mean over the
  images: the mean of per-replica values is the global value whenever replicas hold equally
  many images, with no cross-replica communication.
"""

from __future__ import annotations

from keras import ops

from .. import distribute

__all__ = ["smooth_l1", "reduce_loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
           "mrcnn_bbox_loss", "mrcnn_mask_loss", "LOSS_NAMES", "REDUCTIONS"]

LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
              "mrcnn_mask_loss")
#: the values of ``Config.LOSS_REDUCTION`` (see the module docstring)
REDUCTIONS = ("batch", "image")


def smooth_l1(diff):
    """Elementwise smooth L1 (Huber with delta 1): 0.5 d^2 if |d| < 1 else |d| - 0.5."""
    a = ops.abs(diff)
    return ops.where(a < 1.0, 0.5 * diff * diff, a - 0.5)


def _safe_ratio(total, count):
    count = ops.cast(count, "float32")
    return ops.where(count > 0, total / ops.maximum(count, 1.0), 0.0)


def reduce_loss(terms, counts, reduction="batch"):
    """Scalar loss from ``terms`` [B, ...] (masked loss values, 0 where not counted) and
    ``counts`` [B, ...] (how many elements each entry stands for, 0 where not counted).

    "batch": sum(terms) / sum(counts) over the whole batch (over all replicas, see the module
    docstring); "image": the mean over the B images of sum(terms[b]) / sum(counts[b]).
    A zero count gives 0, never NaN."""
    if reduction == "batch":
        count, replicas = distribute.sum_over_replicas(ops.sum(counts))
        loss = _safe_ratio(ops.sum(terms), count)
        return loss * float(replicas) if replicas > 1 else loss
    if reduction == "image":
        axes = tuple(range(1, len(terms.shape)))
        per_image = _safe_ratio(ops.sum(terms, axis=axes), ops.sum(counts, axis=axes))  # [B]
        return ops.mean(per_image)
    raise ValueError(f"loss reduction must be one of {REDUCTIONS} (Config.LOSS_REDUCTION), "
                     f"got {reduction!r}")


def _xent_from_logits(logits, labels):
    """Sparse softmax cross entropy: logits [..., K], labels [...] int -> [...]."""
    logp = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    return -ops.take_along_axis(logp, ops.cast(labels, "int32")[..., None], axis=-1)[..., 0]


def rpn_class_loss(rpn_match, rpn_class_logits, reduction="batch"):
    """rpn_match [B, A, 1] or [B, A] (1, -1, 0 neutral); logits [B, A, 2] -> mean CE over
    the non-neutral anchors."""
    match = ops.cast(ops.reshape(rpn_match, ops.shape(rpn_class_logits)[:2]), "int32")
    active = ops.cast(ops.not_equal(match, 0), "float32")
    labels = ops.cast(ops.equal(match, 1), "int32")
    ce = _xent_from_logits(ops.cast(rpn_class_logits, "float32"), labels)
    return reduce_loss(ce * active, active, reduction)


def rpn_bbox_loss(target_bbox, rpn_match, rpn_bbox, reduction="batch"):
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
    return reduce_loss(loss * usedf, 4.0 * usedf, reduction)


def mrcnn_class_loss(target_class_ids, pred_class_logits, active_class_ids, reduction="batch"):
    """CE of ROI classification; target_class_ids [B, T], logits [B, T, K], active_class_ids
    [B, K] (1 = class of the image's dataset). ROIs whose predicted class is inactive are
    ignored; mean over the counted ROIs."""
    logits = ops.cast(pred_class_logits, "float32")
    pred = ops.cast(ops.argmax(logits, axis=-1), "int32")
    active = ops.take_along_axis(ops.cast(active_class_ids, "float32"), pred, axis=1)
    ce = _xent_from_logits(logits, target_class_ids)
    return reduce_loss(ce * active, active, reduction)


def mrcnn_bbox_loss(target_bbox, target_class_ids, pred_bbox, reduction="batch"):
    """Smooth L1 on the true class's deltas of positive ROIs; target_bbox [B, T, 4],
    target_class_ids [B, T], pred_bbox [B, T, K, 4]; mean over elements."""
    cls = ops.cast(target_class_ids, "int32")
    pred = ops.take_along_axis(ops.cast(pred_bbox, "float32"),
                               ops.maximum(cls, 0)[..., None, None], axis=2)[:, :, 0]
    pos = ops.cast(cls > 0, "float32")
    loss = ops.sum(smooth_l1(ops.cast(target_bbox, "float32") - pred), axis=-1)
    return reduce_loss(loss * pos, 4.0 * pos, reduction)


def mrcnn_mask_loss(target_masks, target_class_ids, pred_masks, reduction="batch"):
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
    return reduce_loss(ops.sum(bce, axis=(2, 3)) * pos, hw * pos, reduction)
