"""DetectionLayer (inference): refine ROIs by class, per-class NMS, top detections."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from ..data.image_ops import META_WINDOW
from . import box_ops
from .ops import batched_nms

__all__ = ["DetectionLayer", "TrimDetections", "PadDetections", "WindowFromMeta", "meta_window"]


def meta_window(image_meta, image):
    """Normalised window [B, 4] from image_meta [B, META] (the pixel window, field
    :data:`~mrcnn_nuclei.data.image_ops.META_WINDOW`) and the molded image [B, H, W, C]."""
    window = image_meta[:, META_WINDOW]
    shape = ops.shape(image)
    h = ops.cast(shape[1], window.dtype)
    w = ops.cast(shape[2], window.dtype)
    scale = ops.stack([h - 1, w - 1, h - 1, w - 1])
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], dtype=window.dtype)
    return (window - shift) / scale


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class DetectionLayer(layers.Layer):
    """Final detections from classified ROIs.

    Inputs: rois [B, N, 4] normalised; mrcnn_class [B, N, K] probabilities;
    mrcnn_bbox [B, N, K, 4] deltas (divided by ``bbox_std_dev``); window [B, 4] normalised.
    Each ROI takes its best class, is refined with that class's deltas * bbox_std_dev and
    clipped to the window; background and scores < ``min_confidence`` are dropped; NMS at
    ``nms_threshold`` within each class (class-offset trick); the best ``max_instances`` stay.
    Output: [B, max_instances, 6] (y1, x1, y2, x2, class_id, score), best first, zero padded.
    """

    def __init__(self, max_instances=100, min_confidence=0.7, nms_threshold=0.3,
                 bbox_std_dev=(0.1, 0.1, 0.2, 0.2), **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        self.max_instances = int(max_instances)
        self.min_confidence = float(min_confidence)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in np.asarray(bbox_std_dev).ravel()]

    def call(self, rois, mrcnn_class, mrcnn_bbox, window):
        class_ids = ops.cast(ops.argmax(mrcnn_class, axis=-1), "int32")
        scores = ops.max(mrcnn_class, axis=-1)
        deltas = ops.take_along_axis(mrcnn_bbox, class_ids[..., None, None], axis=2)[:, :, 0]
        deltas = deltas * ops.convert_to_tensor(self.bbox_std_dev, dtype=deltas.dtype)
        boxes = box_ops.apply_box_deltas(rois, deltas)
        boxes = box_ops.clip_boxes(boxes, window[:, None, :])
        roi_valid = ops.any(ops.not_equal(rois, 0.0), axis=-1)
        keep = (class_ids > 0) & (scores >= self.min_confidence) & roi_valid
        masked = ops.where(keep, scores, -1.0)
        # boxes of different classes never overlap after shifting each class by 2*class_id
        offset = ops.cast(class_ids, boxes.dtype)[..., None] * 2.0
        idx, valid = batched_nms(boxes + offset, masked, self.max_instances, self.nms_threshold,
                                 score_threshold=-0.5)
        det_boxes = ops.take_along_axis(boxes, idx[..., None], axis=1)
        det_cls = ops.cast(ops.take_along_axis(class_ids, idx, axis=1), boxes.dtype)
        det_scores = ops.take_along_axis(scores, idx, axis=1)
        det = ops.concatenate([det_boxes, det_cls[..., None], det_scores[..., None]], axis=-1)
        return ops.where(valid[..., None], det, ops.zeros_like(det))

    def compute_output_shape(self, rois_shape, mrcnn_class_shape, mrcnn_bbox_shape, window_shape):
        return (rois_shape[0], self.max_instances, 6)

    def get_config(self):
        return {**super().get_config(), "max_instances": self.max_instances,
                "min_confidence": self.min_confidence, "nms_threshold": self.nms_threshold,
                "bbox_std_dev": self.bbox_std_dev}


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class TrimDetections(layers.Layer):
    """detections [B, D, 6] -> boxes [B, n, 4] with n = the largest count of real detections in
    the batch (at least 1), so the mask head only runs on real detections.

    On the JAX backend (static shapes under jit) n = D: all slots, the padded ones are zero
    boxes whose masks are ignored like those of any slot past the detection count."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)

    def call(self, detections):
        if keras.backend.backend() == "jax":
            return detections[:, :, :4]
        count = ops.sum(ops.cast(detections[..., 4] > 0, "int32"), axis=1)
        n = ops.maximum(ops.max(count), 1)
        return detections[:, :n, :4]

    def compute_output_shape(self, shape):
        return (shape[0], None, 4)


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class PadDetections(layers.Layer):
    """masks [B, n, h, w, K] -> [B, size, h, w, K] zero padded along axis 1."""

    def __init__(self, size, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, x):
        n = ops.shape(x)[1]
        return ops.pad(x, [[0, 0], [0, self.size - n], [0, 0], [0, 0], [0, 0]])

    def compute_output_shape(self, shape):
        return (shape[0], self.size) + tuple(shape[2:])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class WindowFromMeta(layers.Layer):
    """(image_meta [B, META], image [B, H, W, C]) -> normalised window [B, 4]."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)

    def call(self, image_meta, image):
        return meta_window(image_meta, image)

    def compute_output_shape(self, image_meta_shape, image_shape):
        return (image_meta_shape[0], 4)
