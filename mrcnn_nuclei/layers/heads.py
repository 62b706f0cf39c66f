"""Classifier/box head and mask head with Matterport's layer names.

Matterport wrapped each layer in TimeDistributed; here the ROIs are folded into the batch
([B, N, ...] -> [B*N, ...]) and plain layers are applied, which is faster and keeps the same
layer names and weight shapes (kernel/bias, gamma/beta/moving_mean/moving_variance).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from .backbone import norm_layer

__all__ = ["FoldRois", "UnfoldRois", "TakeFirst", "fpn_classifier_graph", "build_fpn_mask_graph"]


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class FoldRois(layers.Layer):
    """[B, N, ...] -> [B*N, ...]."""

    def call(self, x):
        return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    def compute_output_shape(self, shape):
        return (None,) + tuple(shape[2:])


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class UnfoldRois(layers.Layer):
    """x [B*N, ...] and reference [B, N, ...] -> [B, N, ...]."""

    def call(self, x, reference):
        n = ops.shape(reference)[1]
        return ops.reshape(x, (-1, n) + tuple(x.shape[1:]))

    def compute_output_shape(self, x_shape, reference_shape):
        return (reference_shape[0], reference_shape[1]) + tuple(x_shape[1:])


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class TakeFirst(layers.Layer):
    """[B, N, ...] -> [B, n, ...]: the first ``n`` entries along axis 1."""

    def __init__(self, n, **kwargs):
        kwargs.setdefault("dtype", "float32")  # boxes stay float32 under mixed precision
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, x):
        return x[:, :self.n]

    def compute_output_shape(self, shape):
        return (shape[0], self.n) + tuple(shape[2:])

    def get_config(self):
        return {**super().get_config(), "n": self.n}


def fpn_classifier_graph(pooled, num_classes, fc_layers_size=1024, pool_size=7, norm="bn",
                         train_bn=False, gn_groups=32):
    """Classifier and box regressor on pooled ROI features [B, N, pool, pool, C].

    Returns (mrcnn_class_logits [B, N, K], mrcnn_class (softmax) [B, N, K],
    mrcnn_bbox [B, N, K, 4]) with K = num_classes.
    """
    x = FoldRois(name="mrcnn_class_fold")(pooled)
    x = layers.Conv2D(fc_layers_size, pool_size, padding="valid", name="mrcnn_class_conv1")(x)
    x = norm_layer("mrcnn_class_bn1", norm, train_bn, gn_groups, fc_layers_size)(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(fc_layers_size, 1, name="mrcnn_class_conv2")(x)
    x = norm_layer("mrcnn_class_bn2", norm, train_bn, gn_groups, fc_layers_size)(x)
    x = layers.Activation("relu")(x)
    x = layers.Reshape((fc_layers_size,), name="pool_squeeze")(x)
    x = UnfoldRois(name="mrcnn_class_unfold")(x, pooled)
    logits = layers.Dense(num_classes, name="mrcnn_class_logits")(x)
    probs = layers.Activation("softmax", dtype="float32", name="mrcnn_class")(logits)
    bbox = layers.Dense(num_classes * 4, name="mrcnn_bbox_fc")(x)
    bbox = layers.Reshape((-1, num_classes, 4), dtype="float32", name="mrcnn_bbox")(bbox)
    return logits, probs, bbox


def build_fpn_mask_graph(num_classes, norm="bn", train_bn=False, gn_groups=32, channels=256):
    """Return a function pooled [B, N, m, m, C] -> masks [B, N, 2m, 2m, K] (sigmoid).

    channels: width of the four 3x3 convolutions and the deconvolution (Matterport: 256; its
    weight files need 256). The head's cost grows with its square.

    The layers (mrcnn_mask_conv1..4, mrcnn_mask_bn1..4, mrcnn_mask_deconv, mrcnn_mask) are
    created once, so the same weights may be applied to several inputs.
    """
    ch = int(channels)
    convs = [layers.Conv2D(ch, 3, padding="same", name=f"mrcnn_mask_conv{i}") for i in range(1, 5)]
    norms = [norm_layer(f"mrcnn_mask_bn{i}", norm, train_bn, gn_groups, ch) for i in range(1, 5)]
    deconv = layers.Conv2DTranspose(ch, 2, strides=2, activation="relu", name="mrcnn_mask_deconv")
    out = layers.Conv2D(num_classes, 1, activation="sigmoid", name="mrcnn_mask")

    def apply(pooled):
        x = FoldRois()(pooled)
        for conv, nl in zip(convs, norms):
            x = layers.Activation("relu")(nl(conv(x)))
        x = out(deconv(x))
        return UnfoldRois()(x, pooled)

    return apply
