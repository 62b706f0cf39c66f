"""DetectionTargetLayer (training): sample ROIs from proposals and build their targets.

Batched over images with ``keras.ops``: random sampling is done by drawing a random key per
proposal, masking the keys of ineligible proposals and taking the top-k.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from . import box_ops
from .ops import crop_and_resize

__all__ = ["DetectionTargetLayer", "NormBoxes"]


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class DetectionTargetLayer(layers.Layer):
    """Proposals + ground truth -> sampled ROIs, class ids, box deltas and mask targets.

    Inputs: proposals [B, P, 4] normalised (zero rows are padding); gt_class_ids [B, G] int
    (0 padding, < 0 crowd); gt_boxes [B, G, 4] normalised; gt_masks [B, h, w, G] (mini-masks
    of ``mini_mask`` else full image size).
    Rules (Matterport's): a proposal is positive when its best IoU with a non-crowd GT is
    >= 0.5, negative when < 0.5 and it does not touch a crowd box (IoU < 0.001); at most
    ``int(rois_per_image * positive_ratio)`` positives are sampled, then
    ``int(n_pos / positive_ratio) - n_pos`` negatives.
    Outputs: rois [B, T, 4] (positives first, then negatives, zero padded), target_class_ids
    [B, T] int32, target_bbox [B, T, 4] (deltas / bbox_std_dev), target_mask [B, T, mh, mw]
    float32 in {0, 1}; T = ``rois_per_image``.
    """

    def __init__(self, rois_per_image=200, positive_ratio=0.33, bbox_std_dev=(0.1, 0.1, 0.2, 0.2),
                 mask_shape=(28, 28), use_mini_mask=True, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        self.rois_per_image = int(rois_per_image)
        self.positive_ratio = float(positive_ratio)
        self.bbox_std_dev = [float(v) for v in np.asarray(bbox_std_dev).ravel()]
        self.mask_shape = tuple(int(v) for v in mask_shape)
        self.use_mini_mask = bool(use_mini_mask)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, proposals, gt_class_ids, gt_boxes, gt_masks):
        t = self.rois_per_image
        gt_class_ids = ops.cast(gt_class_ids, "int32")
        gt_boxes = ops.cast(gt_boxes, "float32")
        bsz = ops.shape(proposals)[0]
        p = proposals.shape[1]
        g = gt_boxes.shape[1]
        prop_valid = ops.any(ops.not_equal(proposals, 0.0), axis=-1)            # [B,P]
        gt_real = ops.any(ops.not_equal(gt_boxes, 0.0), axis=-1)
        gt_obj = (gt_class_ids > 0) & gt_real                                   # [B,G]
        gt_crowd = (gt_class_ids < 0) & gt_real
        iou = box_ops.overlaps(proposals, gt_boxes)                             # [B,P,G]
        obj_iou = ops.where(gt_obj[:, None, :], iou, -1.0)
        crowd_iou = ops.where(gt_crowd[:, None, :], iou, 0.0)
        roi_iou_max = ops.max(obj_iou, axis=2)
        no_crowd = ops.max(crowd_iou, axis=2) < 0.001
        positive = (roi_iou_max >= 0.5) & prop_valid
        negative = (roi_iou_max < 0.5) & no_crowd & prop_valid

        # sample positives / negatives: top-k of random keys, ineligible keys are -1
        kp = min(int(t * self.positive_ratio), p)
        kn = min(t, p)
        r1 = keras.random.uniform((bsz, p), seed=self.seed_generator)
        r2 = keras.random.uniform((bsz, p), seed=self.seed_generator)
        pos_key, pos_ix = ops.top_k(ops.where(positive, r1, -1.0), k=kp)
        neg_key, neg_ix = ops.top_k(ops.where(negative, r2, -1.0), k=kn)
        pos_ok = pos_key >= 0.0
        n_pos = ops.sum(ops.cast(pos_ok, "int32"), axis=1)
        n_neg = ops.cast(ops.cast(n_pos, "float32") / self.positive_ratio, "int32") - n_pos
        n_neg = ops.minimum(n_neg, t - n_pos)
        neg_ok = (neg_key >= 0.0) & (ops.arange(kn)[None, :] < n_neg[:, None])

        # compact (positives first, then negatives) into T slots
        cand_ix = ops.concatenate([pos_ix, neg_ix], axis=1)                     # [B,kp+kn]
        cand_ok = ops.concatenate([pos_ok, neg_ok], axis=1)
        cand_pos = ops.concatenate([pos_ok, ops.zeros_like(neg_ok)], axis=1)
        slots = kp + kn
        key = ops.where(cand_ok, 0, slots) + ops.arange(slots)[None, :]
        order = ops.argsort(key, axis=1)
        if slots < t:
            pad = t - slots
            order = ops.pad(order, [[0, 0], [0, pad]])
            cand_ok = ops.pad(cand_ok, [[0, 0], [0, pad]])
            cand_pos = ops.pad(cand_pos, [[0, 0], [0, pad]])
            cand_ix = ops.pad(cand_ix, [[0, 0], [0, pad]])
        order = order[:, :t]
        sel_ix = ops.take_along_axis(cand_ix, order, axis=1)                    # [B,T]
        sel_ok = ops.take_along_axis(cand_ok, order, axis=1)
        if slots < t:
            sel_ok = sel_ok & (ops.arange(t)[None, :] < slots)
        sel_pos = ops.take_along_axis(cand_pos, order, axis=1) & sel_ok

        rois = ops.take_along_axis(proposals, sel_ix[..., None], axis=1)
        rois = ops.where(sel_ok[..., None], rois, 0.0)
        sel_iou = ops.take_along_axis(obj_iou, sel_ix[..., None], axis=1)       # [B,T,G]
        assign = ops.cast(ops.argmax(sel_iou, axis=2), "int32")                 # [B,T]
        a_boxes = ops.take_along_axis(gt_boxes, assign[..., None], axis=1)
        a_class = ops.take_along_axis(gt_class_ids, assign, axis=1)
        class_ids = ops.where(sel_pos, a_class, 0)
        deltas = box_ops.box_refinement(rois, a_boxes)
        deltas = deltas / ops.convert_to_tensor(self.bbox_std_dev, dtype=deltas.dtype)
        deltas = ops.where(sel_pos[..., None], deltas, 0.0)

        # mask targets: crop each positive ROI from its GT mask
        masks = ops.transpose(ops.cast(gt_masks, "float32"), (0, 3, 1, 2))[..., None]
        mh, mw = masks.shape[2], masks.shape[3]
        masks = ops.reshape(masks, (-1, mh, mw, 1))                            # [B*G,h,w,1]
        boxes = rois
        if self.use_mini_mask:
            gy1, gx1, gy2, gx2 = (a_boxes[..., i] for i in range(4))
            gh = ops.maximum(gy2 - gy1, 1e-8)
            gw = ops.maximum(gx2 - gx1, 1e-8)
            boxes = ops.stack([(rois[..., 0] - gy1) / gh, (rois[..., 1] - gx1) / gw,
                               (rois[..., 2] - gy1) / gh, (rois[..., 3] - gx1) / gw], -1)
        box_ix = ops.arange(bsz, dtype="int32")[:, None] * g + assign
        crops = crop_and_resize(masks, ops.reshape(boxes, (-1, 4)), ops.reshape(box_ix, (-1,)),
                                self.mask_shape)
        crops = ops.reshape(ops.round(crops[..., 0]), (-1, t) + self.mask_shape)
        crops = ops.where(sel_pos[..., None, None], crops, 0.0)
        return [ops.stop_gradient(rois), ops.stop_gradient(class_ids),
                ops.stop_gradient(deltas), ops.stop_gradient(crops)]

    def compute_output_shape(self, proposals_shape, gt_class_ids_shape=None,
                             gt_boxes_shape=None, gt_masks_shape=None):
        b = proposals_shape[0]
        t = self.rois_per_image
        return [(b, t, 4), (b, t), (b, t, 4), (b, t) + self.mask_shape]

    def compute_output_spec(self, proposals, gt_class_ids, gt_boxes, gt_masks):
        shapes = self.compute_output_shape(proposals.shape)
        dtypes = ["float32", "int32", "float32", "float32"]
        return [keras.KerasTensor(s, dtype=d) for s, d in zip(shapes, dtypes)]

    def get_config(self):
        return {**super().get_config(), "rois_per_image": self.rois_per_image,
                "positive_ratio": self.positive_ratio, "bbox_std_dev": self.bbox_std_dev,
                "mask_shape": list(self.mask_shape), "use_mini_mask": self.use_mini_mask,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class NormBoxes(layers.Layer):
    """(pixel boxes [B, N, 4], image [B, H, W, C]) -> normalised boxes [B, N, 4]
    (all-zero padding rows stay zero)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)

    def call(self, boxes, image):
        boxes = ops.cast(boxes, "float32")
        shape = ops.shape(image)
        out = box_ops.norm_boxes(boxes, ops.stack([shape[1], shape[2]]))
        real = ops.any(ops.not_equal(boxes, 0.0), axis=-1, keepdims=True)
        return ops.where(real, out, 0.0)

    def compute_output_shape(self, boxes_shape, image_shape):
        return tuple(boxes_shape)
