"""ProposalLayer: RPN scores and deltas -> NMS-filtered normalised proposals (batched)."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from . import box_ops
from .ops import batched_nms

__all__ = ["ProposalLayer"]


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class ProposalLayer(layers.Layer):
    """Top ``pre_nms_limit`` anchors by score, decoded with deltas * ``rpn_bbox_std_dev``,
    clipped to [0, 1], NMS at ``nms_threshold``, ``proposal_count`` boxes per image.

    Inputs: rpn_probs [B, A, 2], rpn_bbox [B, A, 4], anchors [A, 4] or [B, A, 4] (normalised).
    Output: [B, proposal_count, 4] normalised (y1, x1, y2, x2), best first, zero padded.
    """

    def __init__(self, proposal_count, nms_threshold, pre_nms_limit=6000,
                 rpn_bbox_std_dev=(0.1, 0.1, 0.2, 0.2), **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in np.asarray(rpn_bbox_std_dev).ravel()]

    def call(self, rpn_probs, rpn_bbox, anchors):
        scores = rpn_probs[..., 1]
        n_anchors = ops.shape(scores)[1]
        k = ops.minimum(self.pre_nms_limit, n_anchors)
        if isinstance(n_anchors, int):
            k = min(self.pre_nms_limit, n_anchors)
        scores, ix = ops.top_k(scores, k=k, sorted=True)
        deltas = ops.take_along_axis(rpn_bbox, ix[..., None], axis=1)
        deltas = deltas * ops.convert_to_tensor(self.rpn_bbox_std_dev, dtype=deltas.dtype)
        if len(anchors.shape) == 2:
            pre = ops.take(anchors, ix, axis=0)
        else:
            pre = ops.take_along_axis(anchors, ix[..., None], axis=1)
        boxes = box_ops.apply_box_deltas(pre, deltas)
        boxes = ops.clip(boxes, 0.0, 1.0)
        idx, valid = batched_nms(boxes, scores, self.proposal_count, self.nms_threshold)
        out = ops.take_along_axis(boxes, idx[..., None], axis=1)
        return ops.where(valid[..., None], out, ops.zeros_like(out))

    def compute_output_shape(self, rpn_probs_shape, rpn_bbox_shape, anchors_shape):
        return (rpn_probs_shape[0], self.proposal_count, 4)

    def get_config(self):
        return {**super().get_config(), "proposal_count": self.proposal_count,
                "nms_threshold": self.nms_threshold, "pre_nms_limit": self.pre_nms_limit,
                "rpn_bbox_std_dev": self.rpn_bbox_std_dev}
