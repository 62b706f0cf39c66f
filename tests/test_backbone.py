"""Backbone: Matterport layer names, C2..C5 shapes for ResNet-18/34/50/101, frozen BN, GN,
PREPROC and a user callable; FPN names and shapes."""

import json

import keras
import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.layers.backbone import FrozenBatchNorm, build_backbone, resnet_graph
from mrcnn_nuclei.layers.fpn import fpn_graph


def _backbone_model(arch, channels=3, **kw):
    inp = keras.Input((None, None, channels))
    outs = resnet_graph(inp, arch, **kw)
    return keras.Model(inp, outs)


@pytest.mark.parametrize("arch,ch,blocks4", [("resnet50", (256, 512, 1024, 2048), 6),
                                              ("resnet101", (256, 512, 1024, 2048), 23)])
def test_bottleneck_shapes_and_names(arch, ch, blocks4):
    model = _backbone_model(arch)
    x = np.random.default_rng(0).normal(size=(1, 256, 256, 3)).astype(np.float32)
    outs = model.predict_on_batch(x)
    for o, s, c in zip(outs, (4, 8, 16, 32), ch):
        assert o.shape == (1, 256 // s, 256 // s, c) and o.dtype == np.float32
        assert np.isfinite(o).all()
    # 512: the same graph gives stride-exact shapes (static shape inference, no second pass)
    inp = keras.Input((512, 512, 3))
    for o, s, c in zip(resnet_graph(inp, arch), (4, 8, 16, 32), ch):
        assert tuple(o.shape) == (None, 512 // s, 512 // s, c)
    names = {l.name for l in model.layers}
    assert {"conv1", "bn_conv1", "res2a_branch2a", "res2a_branch1", "bn2a_branch1",
            "res2c_branch2c", "res5c_branch2c", "bn5c_branch2c"} <= names
    letters = "abcdefghijklmnopqrstuvw"[:blocks4]
    assert all(f"res4{c}_branch2b" in names for c in letters)
    assert f"res4{'abcdefghijklmnopqrstuvwx'[blocks4]}_branch2a" not in names
    conv1 = model.get_layer("conv1")
    assert conv1.kernel.shape == (7, 7, 3, 64) and conv1.use_bias
    assert model.get_layer("res2a_branch1").kernel.shape == (1, 1, 64, 256)
    assert model.get_layer("res4a_branch2a").strides == (2, 2)


def test_legacy_layer_names_present(legacy_dir):
    """Every weighted ResNet-101 layer name of mask_rcnn_coco.h5 exists in our backbone."""
    names = json.loads((legacy_dir / "mask_rcnn_coco_layer_names.json").read_text())
    if isinstance(names, dict):
        names = names.get("layer_names", next(iter(names.values())))
    wanted = {n for n in names if n == "conv1" or n.startswith(("res", "bn"))
              and not n.endswith("_out")}
    ours = {l.name for l in _backbone_model("resnet101").layers}
    missing = sorted(n for n in wanted if n not in ours and ("branch" in n or n in ("conv1",
                                                                                    "bn_conv1")))
    assert not missing, missing[:10]


@pytest.mark.parametrize("arch,ch", [("resnet18", (64, 128, 256, 512)),
                                     ("resnet34", (64, 128, 256, 512))])
def test_basic_block_nets(arch, ch):
    inp = keras.Input((128, 128, 3))
    outs = resnet_graph(inp, arch)
    for o, s, c in zip(outs, (4, 8, 16, 32), ch):
        assert tuple(o.shape) == (None, 128 // s, 128 // s, c)
    model = keras.Model(inp, outs)
    names = {l.name for l in model.layers}
    assert "res3a_branch1" in names and "res2a_branch2c" not in names


def test_frozen_bn_uses_moving_statistics_in_training():
    inp = keras.Input((64, 64, 3))
    model = keras.Model(inp, resnet_graph(inp, "resnet18", train_bn=False))
    bn = model.get_layer("bn_conv1")
    assert isinstance(bn, FrozenBatchNorm) and not bn.trainable
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32) * 5 + 3
    a = [np.asarray(t) for t in model(x, training=True)]
    b = [np.asarray(t) for t in model(x, training=False)]
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)
    model2_in = keras.Input((64, 64, 3))
    model2 = keras.Model(model2_in, resnet_graph(model2_in, "resnet18", train_bn=True))
    assert model2.get_layer("bn_conv1").trainable
    u = np.asarray(model2(x, training=True)[0])
    v = np.asarray(model2(x, training=False)[0])
    assert np.abs(u - v).max() > 1e-3  # batch statistics differ from the initial moving ones


def test_group_norm_preproc_and_channels():
    inp = keras.Input((64, 64, 5))
    model = keras.Model(inp, resnet_graph(inp, "resnet18", norm="gn", gn_groups=32,
                                          preproc_conv=True))
    assert isinstance(model.get_layer("bn_conv1"), keras.layers.GroupNormalization)
    assert model.get_layer("bn_conv1").groups == 32
    assert model.get_layer("PREPROC").kernel.shape == (1, 1, 5, 3)
    assert model.get_layer("conv1").kernel.shape == (7, 7, 3, 64)
    inp2 = keras.Input((64, 64, 1))
    m2 = keras.Model(inp2, resnet_graph(inp2, "resnet18"))
    assert m2.get_layer("conv1").kernel.shape == (7, 7, 1, 64)


def test_callable_backbone_and_bad_name():
    calls = {}

    def tiny(x, stage5=True, train_bn=False):
        calls["train_bn"] = train_bn
        outs = []
        for i, ch in enumerate((8, 16, 32, 64)):
            x = keras.layers.Conv2D(ch, 3, strides=4 if i == 0 else 2, padding="same",
                                    name=f"tiny{i}")(x)
            outs.append(x)
        return outs

    class C(Config):
        NAME = "t"
        BACKBONE = staticmethod(tiny)
        PREPROC_CONV = True
        IMAGE_CHANNEL_COUNT = 4
        MEAN_PIXEL = [0, 0, 0, 0]

    inp = keras.Input((64, 64, 4))
    outs = build_backbone(inp, C())
    assert calls["train_bn"] is False
    assert [tuple(o.shape)[1:] for o in outs] == [(16, 16, 8), (8, 8, 16), (4, 4, 32), (2, 2, 64)]
    with pytest.raises(ValueError, match="resnet"):
        resnet_graph(inp, "resnet7")


def test_fpn_names_and_shapes():
    inp = keras.Input((128, 128, 3))
    c2, c3, c4, c5 = resnet_graph(inp, "resnet18")
    ps = fpn_graph(c2, c3, c4, c5, 32)
    assert [tuple(p.shape)[1:] for p in ps] == [(32, 32, 32), (16, 16, 32), (8, 8, 32),
                                                (4, 4, 32), (2, 2, 32)]
    model = keras.Model(inp, ps)
    for n in ("fpn_c5p5", "fpn_c4p4", "fpn_c3p3", "fpn_c2p2", "fpn_p2", "fpn_p3", "fpn_p4",
              "fpn_p5", "fpn_p6"):
        model.get_layer(n)
    assert model.get_layer("fpn_p2").kernel.shape == (3, 3, 32, 32)
    assert not model.get_layer("fpn_p6").weights
    x = np.random.default_rng(1).normal(size=(1, 128, 128, 3)).astype(np.float32)
    p5, p6 = model.predict_on_batch(x)[3:]
    np.testing.assert_allclose(p6, p5[:, ::2, ::2], atol=1e-6)  # P6 subsamples P5
