"""Region proposal network: one shared sub-model ``rpn_model`` applied to every pyramid level,
and in-graph anchor generation for any (pad64) image size."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

__all__ = ["build_rpn_model", "rpn_on_pyramid", "PyramidAnchors"]


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class _ReshapeAnchors(layers.Layer):
    """[B, h, w, k*n] -> [B, h*w*k, n] (anchor order y, x, anchor)."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, x):
        return ops.reshape(x, (ops.shape(x)[0], -1, self.n))

    def compute_output_shape(self, shape):
        return (shape[0], None, self.n)

    def get_config(self):
        return {**super().get_config(), "n": self.n}


def build_rpn_model(anchor_stride, anchors_per_location, depth):
    """The shared RPN head as a keras.Model named ``rpn_model``.

    Input [B, h, w, depth] feature map -> [rpn_class_logits [B, h*w*k, 2],
    rpn_probs [B, h*w*k, 2], rpn_bbox [B, h*w*k, 4]] with k = anchors_per_location.
    """
    fmap = keras.Input(shape=(None, None, depth), name="input_rpn_feature_map")
    shared = layers.Conv2D(512, 3, padding="same", activation="relu", strides=anchor_stride,
                           name="rpn_conv_shared")(fmap)
    x = layers.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw")(shared)
    logits = _ReshapeAnchors(2, name="rpn_class_reshape")(x)
    probs = layers.Activation("softmax", dtype="float32", name="rpn_probs")(logits)
    x = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred")(shared)
    bbox = _ReshapeAnchors(4, name="rpn_bbox_reshape")(x)
    return keras.Model(fmap, [logits, probs, bbox], name="rpn_model")


def rpn_on_pyramid(rpn, feature_maps):
    """Apply ``rpn`` to [P2..P6] and concatenate -> rpn_class_logits, rpn_class, rpn_bbox
    ([B, A, 2], [B, A, 2], [B, A, 4]), anchors ordered level, y, x, ratio."""
    outs = [rpn(p) for p in feature_maps]
    names = ["rpn_class_logits", "rpn_class", "rpn_bbox"]
    # float32 (also under mixed precision): proposals are decoded from these
    return [layers.Concatenate(axis=1, dtype="float32", name=n)([o[i] for o in outs])
            for i, n in enumerate(names)]


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class PyramidAnchors(layers.Layer):
    """Normalised anchors [A, 4] for the input image's size, generated in the graph.

    Input: the molded image [B, H, W, C]. Anchors per level at centres
    ``arange(0, ceil(H/stride), anchor_stride) * stride`` (order level, y, x, ratio), then
    normalised as ``norm_boxes`` does. Equal to ``norm_boxes(boxes.get_anchors(config, (H, W)))``.
    """

    def __init__(self, scales, ratios, strides, anchor_stride=1, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        self.scales = [float(s) for s in scales]
        self.ratios = [float(r) for r in ratios]
        self.strides = [int(s) for s in strides]
        self.anchor_stride = int(anchor_stride)

    def call(self, image):
        shape = ops.shape(image)
        if keras.backend.backend() == "jax":  # static sizes under jit: anchors are constants
            return ops.convert_to_tensor(self._anchors_float32(int(shape[1]), int(shape[2])))
        h = ops.cast(shape[1], "float32")
        w = ops.cast(shape[2], "float32")
        r = ops.convert_to_tensor(np.asarray(self.ratios, np.float32))
        out = []
        for scale, stride in zip(self.scales, self.strides):
            fh = ops.cast(ops.ceil(h / stride), "int32")
            fw = ops.cast(ops.ceil(w / stride), "int32")
            cy = ops.cast(ops.arange(0, fh, self.anchor_stride), "float32") * stride
            cx = ops.cast(ops.arange(0, fw, self.anchor_stride), "float32") * stride
            ny, nx, nr = ops.shape(cy)[0], ops.shape(cx)[0], len(self.ratios)
            hs = scale / ops.sqrt(r)
            ws = scale * ops.sqrt(r)
            cy = ops.broadcast_to(cy[:, None, None], (ny, nx, nr))
            cx = ops.broadcast_to(cx[None, :, None], (ny, nx, nr))
            hs = ops.broadcast_to(hs[None, None, :], (ny, nx, nr))
            ws = ops.broadcast_to(ws[None, None, :], (ny, nx, nr))
            b = ops.stack([cy - 0.5 * hs, cx - 0.5 * ws, cy + 0.5 * hs, cx + 0.5 * ws], -1)
            out.append(ops.reshape(b, (-1, 4)))
        boxes = ops.concatenate(out, axis=0)
        scale = ops.stack([h - 1, w - 1, h - 1, w - 1])
        shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0])
        return (boxes - shift) / scale

    def _anchors_float32(self, height, width):
        """NumPy twin of the graph path for a known image size: the same float32 operations in
        the same order, so both give bit-identical anchors."""
        f = np.float32
        h, w = f(height), f(width)
        r = np.asarray(self.ratios, f)
        out = []
        for scale, stride in zip(self.scales, self.strides):
            fh = int(np.ceil(h / f(stride)))
            fw = int(np.ceil(w / f(stride)))
            cy = np.arange(0, fh, self.anchor_stride).astype(f) * f(stride)
            cx = np.arange(0, fw, self.anchor_stride).astype(f) * f(stride)
            ny, nx, nr = len(cy), len(cx), len(self.ratios)
            hs = f(scale) / np.sqrt(r)
            ws = f(scale) * np.sqrt(r)
            cy = np.broadcast_to(cy[:, None, None], (ny, nx, nr))
            cx = np.broadcast_to(cx[None, :, None], (ny, nx, nr))
            hs = np.broadcast_to(hs[None, None, :], (ny, nx, nr))
            ws = np.broadcast_to(ws[None, None, :], (ny, nx, nr))
            b = np.stack([cy - f(0.5) * hs, cx - f(0.5) * ws, cy + f(0.5) * hs,
                          cx + f(0.5) * ws], -1)
            out.append(b.reshape(-1, 4))
        boxes = np.concatenate(out, axis=0)
        scale = np.stack([h - f(1), w - f(1), h - f(1), w - f(1)])
        shift = np.asarray([0.0, 0.0, 1.0, 1.0], f)
        return ((boxes - shift) / scale).astype(f)

    def compute_output_shape(self, shape):
        return (None, 4)

    def get_config(self):
        return {**super().get_config(), "scales": self.scales, "ratios": self.ratios,
                "strides": self.strides, "anchor_stride": self.anchor_stride}
