"""ResNet backbones with Matterport's layer names (so legacy ``.h5`` weights load by name).

Names: ``conv1`` (7x7/2, bias), ``bn_conv1``, a 3x3/2 max-pool, then blocks
``res{stage}{block}_branch{2a,2b,2c,1}`` with norms ``bn{stage}{block}_branch...``; stage 2
keeps the resolution, later stages start with a stride-2 block (the stride sits on the first
convolution of the residual branch, as in the Caffe ResNets Matterport used).  ResNet-18/34 use
basic blocks (branches 2a, 2b) with the same scheme.  Returns C2..C5 (strides 4, 8, 16, 32).
"""

from __future__ import annotations

import string

import keras
from keras import layers

__all__ = ["FrozenBatchNorm", "norm_layer", "resnet_graph", "build_backbone", "STAGE_BLOCKS"]

# blocks per stage 2..5 and whether the net uses bottleneck blocks
STAGE_BLOCKS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
}


@keras.saving.register_keras_serializable(package="mrcnn_nuclei")
class FrozenBatchNorm(layers.BatchNormalization):
    """Batch norm that runs in inference mode (moving statistics) unless ``train_bn``.

    With ``train_bn=False`` the layer is also created non-trainable, as Matterport's
    recommendation for small batches; with ``train_bn=True`` it is an ordinary batch norm.
    """

    def __init__(self, train_bn=False, **kwargs):
        kwargs.setdefault("epsilon", 1e-3)
        super().__init__(**kwargs)
        self.train_bn = bool(train_bn)
        if not self.train_bn:
            self.trainable = False

    def call(self, inputs, training=None, mask=None):
        if not self.train_bn:
            training = False
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        cfg = super().get_config()
        cfg["train_bn"] = self.train_bn
        return cfg


def norm_layer(name, norm="bn", train_bn=False, gn_groups=32, channels=None):
    """A normalisation layer named ``name``: FrozenBatchNorm ("bn") or GroupNormalization ("gn").

    For "gn" the group count is reduced to a divisor of ``channels`` when needed.
    """
    if norm == "gn":
        groups = int(gn_groups)
        if channels is not None:
            while channels % groups:
                groups -= 1
        return layers.GroupNormalization(groups=groups, epsilon=1e-5, name=name)
    if norm != "bn":
        raise ValueError(f"norm must be 'bn' or 'gn', got {norm!r} (Config.NORM)")
    return FrozenBatchNorm(train_bn=train_bn, name=name)


def _block(x, filters, stage, block, strides, shortcut, bottleneck, norm, train_bn, gn_groups):
    conv = f"res{stage}{block}_branch"
    bn = f"bn{stage}{block}_branch"
    out_ch = filters * 4 if bottleneck else filters

    def nl(name, ch):
        return norm_layer(name, norm, train_bn, gn_groups, ch)

    if bottleneck:
        y = layers.Conv2D(filters, 1, strides=strides, use_bias=True, name=conv + "2a")(x)
        y = nl(bn + "2a", filters)(y)
        y = layers.Activation("relu")(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=True, name=conv + "2b")(y)
        y = nl(bn + "2b", filters)(y)
        y = layers.Activation("relu")(y)
        y = layers.Conv2D(out_ch, 1, use_bias=True, name=conv + "2c")(y)
        y = nl(bn + "2c", out_ch)(y)
    else:
        y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=True,
                          name=conv + "2a")(x)
        y = nl(bn + "2a", filters)(y)
        y = layers.Activation("relu")(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=True, name=conv + "2b")(y)
        y = nl(bn + "2b", filters)(y)
    if shortcut:
        s = layers.Conv2D(out_ch, 1, strides=strides, use_bias=True, name=conv + "1")(x)
        s = nl(bn + "1", out_ch)(s)
    else:
        s = x
    y = layers.Add(name=f"res{stage}{block}_add")([y, s])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


def resnet_graph(input_image, architecture, stage5=True, train_bn=False, norm="bn",
                 gn_groups=32, preproc_conv=False):
    """Build a ResNet on ``input_image`` [B, H, W, C] -> [C2, C3, C4, C5] (C5 None without stage5).

    architecture: "resnet18" | "resnet34" | "resnet50" | "resnet101". ``preproc_conv`` adds a
    1x1 conv named ``PREPROC`` projecting C channels to 3 before ``conv1``.
    """
    if architecture not in STAGE_BLOCKS:
        raise ValueError(f"unknown backbone {architecture!r} (Config.BACKBONE); use one of "
                         f"{sorted(STAGE_BLOCKS)} or a callable")
    counts, bottleneck = STAGE_BLOCKS[architecture]
    x = input_image
    if preproc_conv:
        x = layers.Conv2D(3, 1, use_bias=True, name="PREPROC")(x)
    x = layers.ZeroPadding2D(3)(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=True, name="conv1")(x)
    x = norm_layer("bn_conv1", norm, train_bn, gn_groups, 64)(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    outs = []
    for i, (n, filters) in enumerate(zip(counts, (64, 128, 256, 512))):
        stage = i + 2
        if stage == 5 and not stage5:
            outs.append(None)
            break
        for j in range(n):
            letter = string.ascii_lowercase[j] if j < 26 else f"z{j}"
            first = j == 0
            strides = (2 if stage > 2 else 1) if first else 1
            # the first block of each stage projects the shortcut (basic nets only need it
            # when the shape changes, i.e. not in stage 2)
            shortcut = first and (bottleneck or stage > 2)
            x = _block(x, filters, stage, letter, strides, shortcut, bottleneck, norm, train_bn,
                       gn_groups)
        outs.append(x)
    return outs


def build_backbone(input_image, config):
    """C2..C5 for ``config``: a named ResNet, or the user's callable ``config.BACKBONE``.

    A callable is called as ``f(input_image, stage5=True, train_bn=config.TRAIN_BN)`` and must
    return four tensors [C2, C3, C4, C5] with strides 4, 8, 16, 32.
    """
    x = input_image
    if callable(config.BACKBONE):
        if config.PREPROC_CONV:
            x = layers.Conv2D(3, 1, use_bias=True, name="PREPROC")(x)
        outs = config.BACKBONE(x, stage5=True, train_bn=config.TRAIN_BN)
        if not isinstance(outs, (list, tuple)) or len(outs) != 4:
            raise ValueError("Config.BACKBONE callable must return [C2, C3, C4, C5] "
                             f"(four feature maps), got {type(outs).__name__}")
        return list(outs)
    return resnet_graph(x, config.BACKBONE, stage5=True, train_bn=config.TRAIN_BN,
                        norm=config.NORM, gn_groups=config.GN_GROUPS,
                        preproc_conv=config.PREPROC_CONV)
