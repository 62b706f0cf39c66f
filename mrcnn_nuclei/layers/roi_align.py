"""Pyramid ROIAlign: each box is pooled from the one pyramid level that suits its size."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from .ops import pyramid_crop_and_resize

__all__ = ["PyramidROIAlign", "roi_levels"]


def roi_levels(boxes, image_shape):
    """Pyramid level (2..5) per normalised box [..., 4] for an image (h, w) -> int32 [...].

    level = clip(4 + round(log2(sqrt(h*w) / (224 / sqrt(H*W)))), 2, 5) with h, w normalised.
    """
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    area = ops.cast(image_shape[0], "float32") * ops.cast(image_shape[1], "float32")
    ref = 224.0 / ops.sqrt(area)
    size = ops.sqrt(ops.maximum(h * w, 1e-12))
    lvl = 4.0 + ops.round(ops.log(size / ref) / math.log(2.0))
    return ops.cast(ops.clip(lvl, 2.0, 5.0), "int32")


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class PyramidROIAlign(layers.Layer):
    """Crop-and-resize every box from its level's feature map.

    Inputs: boxes [B, N, 4] normalised; image [B, H, W, C'] the molded input image (only its
    size is used, for the level rule); feature_maps P2..P5 each [B, h_l, w_l, C].
    Output: [B, N, pool_h, pool_w, C] in the original box order. Each box is cropped once
    (only from its own level).
    """

    def __init__(self, pool_shape, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)

    def call(self, boxes, image, feature_maps):
        image_shape = ops.shape(image)[1:3]
        b = ops.shape(boxes)[0]
        n = ops.shape(boxes)[1]
        flat = ops.reshape(boxes, (-1, 4))
        batch_ix = ops.reshape(ops.repeat(ops.arange(b, dtype="int32")[:, None], n, axis=1), (-1,))
        levels = roi_levels(flat, image_shape) - 2
        pooled = pyramid_crop_and_resize(list(feature_maps), ops.stop_gradient(flat),
                                         ops.stop_gradient(batch_ix), levels, self.pool_shape)
        c = feature_maps[0].shape[-1]
        return ops.reshape(pooled, (b, n, self.pool_shape[0], self.pool_shape[1], c))

    def compute_output_shape(self, boxes_shape, image_shape, feature_maps_shape):
        return (boxes_shape[0], boxes_shape[1]) + self.pool_shape + (feature_maps_shape[0][-1],)

    def get_config(self):
        return {**super().get_config(), "pool_shape": list(self.pool_shape)}
