"""Build Matterport-layout legacy weight files for the tests (never shipped in the package).

The layout follows ../shared/legacy/README.md: Keras 2.0.8 ``save_weights`` of a training-mode
model, one group per layer in ``layer_names`` order, ``weight_names`` attributes, the nested
``rpn_model`` group, TimeDistributed head names, ResNet-101 / 81-class COCO shapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

_FILTERS = {2: (64, 64, 256), 3: (128, 128, 512), 4: (256, 256, 1024), 5: (512, 512, 2048)}
_STAGE_IN = {2: 64, 3: 256, 4: 512, 5: 1024}
_BN_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")
_RESNET = re.compile(r"^(res|bn)(\d)([a-z])_branch(2a|2b|2c|1)$")
RPN_SUBLAYERS = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")


def _conv(k, cin, cout):
    return [("kernel", (k, k, cin, cout)), ("bias", (cout,))]


def _bn(c):
    return [(key, (c,)) for key in _BN_KEYS]


def coco_weight_shapes(name, num_classes=81, fpn=256, anchors=3):
    """[(weight key, shape)] of one layer of Matterport's ResNet-101 COCO model ([] = no weights).

    For ``rpn_model`` the keys are ``<sub-layer>/<key>``.
    """
    m = _RESNET.match(name)
    if m:
        kind, stage, block, branch = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        f1, f2, f3 = _FILTERS[stage]
        cin = _STAGE_IN[stage] if block == "a" else f3
        conv = {"2a": (1, cin, f1), "2b": (3, f1, f2), "2c": (1, f2, f3), "1": (1, cin, f3)}[branch]
        return _conv(*conv) if kind == "res" else _bn(conv[2])
    if name == "conv1":
        return _conv(7, 3, 64)
    if name == "bn_conv1":
        return _bn(64)
    lateral = {"fpn_c5p5": 2048, "fpn_c4p4": 1024, "fpn_c3p3": 512, "fpn_c2p2": 256}
    if name in lateral:
        return _conv(1, lateral[name], fpn)
    if name in ("fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5"):
        return _conv(3, fpn, fpn)
    if name == "rpn_model":
        out = []
        for sub, (k, cin, cout) in zip(RPN_SUBLAYERS, [(3, fpn, 512), (1, 512, 2 * anchors),
                                                       (1, 512, 4 * anchors)]):
            out += [(f"{sub}/{key}", shape) for key, shape in _conv(k, cin, cout)]
        return out
    heads = {
        "mrcnn_class_conv1": _conv(7, fpn, 1024), "mrcnn_class_bn1": _bn(1024),
        "mrcnn_class_conv2": _conv(1, 1024, 1024), "mrcnn_class_bn2": _bn(1024),
        "mrcnn_class_logits": [("kernel", (1024, num_classes)), ("bias", (num_classes,))],
        "mrcnn_bbox_fc": [("kernel", (1024, 4 * num_classes)), ("bias", (4 * num_classes,))],
        "mrcnn_mask_deconv": [("kernel", (2, 2, 256, 256)), ("bias", (256,))],
        "mrcnn_mask": _conv(1, 256, num_classes),
    }
    for i in range(1, 5):
        heads[f"mrcnn_mask_conv{i}"] = _conv(3, 256, 256)
        heads[f"mrcnn_mask_bn{i}"] = _bn(256)
    return heads.get(name, [])


def coco_layer_names(legacy_dir):
    """The 406 layer names of mask_rcnn_coco.h5 in file order."""
    return json.loads((Path(legacy_dir) / "mask_rcnn_coco_layer_names.json").read_text())


def real_first_arrays(legacy_dir):
    """{(layer, key): array} of the real first layers (conv1, bn_conv1, res2a_branch1)."""
    npz = np.load(Path(legacy_dir) / "mask_rcnn_coco_first_layers.npz")
    out = {}
    for entry in npz.files:
        layer, key = entry.split("__")
        out[(layer, key[: -len("_0")])] = npz[entry]
    return out


def make_coco_arrays(layer_names, seed=0, real=None, num_classes=81):
    """{layer: [(stored weight name, array)]}: random (seeded) arrays, ``real`` ones where given."""
    rng = np.random.default_rng(seed)
    real = real or {}
    out = {}
    for name in layer_names:
        items = []
        for key, shape in coco_weight_shapes(name, num_classes):
            if (name, key) in real:
                array = np.asarray(real[(name, key)], np.float32)
                assert array.shape == shape, (name, key, array.shape, shape)
            else:
                array = rng.standard_normal(shape, dtype=np.float32) * 0.05
                if key.endswith("moving_variance"):
                    array = np.abs(array) + 0.5
            stored = f"{key}:0" if name == "rpn_model" else f"{name}/{key}:0"
            items.append((stored, array))
        out[name] = items
    return out


def write_legacy_h5(path, layer_names, arrays, keras_version="2.0.8", wrap_model_weights=False):
    """Write a Keras-1/2 weights file: ``arrays`` = {layer: [(stored weight name, array)]}."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrap_model_weights else f
        f.attrs["keras_version"] = np.bytes_(keras_version)
        f.attrs["backend"] = np.bytes_("tensorflow")
        root.attrs["layer_names"] = np.array([n.encode("utf8") for n in layer_names])
        for name in layer_names:
            group = root.create_group(name)
            items = arrays.get(name, [])
            group.attrs["weight_names"] = np.array([w.encode("utf8") for w, _ in items],
                                                   dtype="S" + str(max([len(w) for w, _ in items],
                                                                       default=1)))
            for wname, array in items:
                group.create_dataset(wname, data=array)
    return path
