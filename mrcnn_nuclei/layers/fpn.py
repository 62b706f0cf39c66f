"""Feature pyramid P2..P6 on top of C2..C5 with Matterport's layer names."""

from __future__ import annotations

from keras import layers

__all__ = ["fpn_graph"]


def fpn_graph(c2, c3, c4, c5, pyramid_size=256):
    """[C2..C5] -> [P2, P3, P4, P5, P6], each with ``pyramid_size`` channels.

    P5 = fpn_c5p5(C5); Pk = up(P{k+1}) + fpn_ckpk(Ck); then a 3x3 conv fpn_pk on each;
    P6 = fpn_p6, a stride-2 subsampling of P5 (strides 4, 8, 16, 32, 64).
    """
    p5 = layers.Conv2D(pyramid_size, 1, name="fpn_c5p5")(c5)
    p4 = layers.Add(name="fpn_p4add")([
        layers.UpSampling2D(2, name="fpn_p5upsampled")(p5),
        layers.Conv2D(pyramid_size, 1, name="fpn_c4p4")(c4)])
    p3 = layers.Add(name="fpn_p3add")([
        layers.UpSampling2D(2, name="fpn_p4upsampled")(p4),
        layers.Conv2D(pyramid_size, 1, name="fpn_c3p3")(c3)])
    p2 = layers.Add(name="fpn_p2add")([
        layers.UpSampling2D(2, name="fpn_p3upsampled")(p3),
        layers.Conv2D(pyramid_size, 1, name="fpn_c2p2")(c2)])
    p2 = layers.Conv2D(pyramid_size, 3, padding="same", name="fpn_p2")(p2)
    p3 = layers.Conv2D(pyramid_size, 3, padding="same", name="fpn_p3")(p3)
    p4 = layers.Conv2D(pyramid_size, 3, padding="same", name="fpn_p4")(p4)
    p5 = layers.Conv2D(pyramid_size, 3, padding="same", name="fpn_p5")(p5)
    p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]
