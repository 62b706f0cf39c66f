"""Every custom Keras layer of the package survives ``get_config`` -> ``from_config``.

keras-hub style: one parametrised case per layer with non-default constructor arguments and a
small input. For each layer the config must hold every constructor argument, rebuild an equal
config, deserialize through the registered name to the same class, and the rebuilt layer (weights
copied where it has any) must give the same output. A layer class added to the package without a
case here fails :func:`test_every_custom_layer_has_a_case`.
"""

import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest

import mrcnn_nuclei
from mrcnn_nuclei.layers.backbone import FrozenBatchNorm
from mrcnn_nuclei.layers.detection import (DetectionLayer, PadDetections, TrimDetections,
                                           WindowFromMeta)
from mrcnn_nuclei.layers.detection_targets import DetectionTargetLayer, NormBoxes
from mrcnn_nuclei.layers.heads import FoldRois, TakeFirst, UnfoldRois
from mrcnn_nuclei.layers.proposals import ProposalLayer
from mrcnn_nuclei.layers.roi_align import PyramidROIAlign
from mrcnn_nuclei.layers.rpn import PyramidAnchors, _ReshapeAnchors


def _boxes(rng, shape, scale=1.0):
    """Random valid (y1, x1, y2, x2) boxes of ``shape + (4,)`` inside [0, scale]."""
    a = rng.uniform(0, 0.6, shape + (2,))
    size = rng.uniform(0.1, 0.4, shape + (2,))
    return (np.concatenate([a, a + size], axis=-1) * scale).astype("float32")


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype("float32")


def _probs(rng, *shape):
    e = np.exp(_rand(rng, *shape))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


def _inputs(name, rng):
    """Positional call arguments of each case (NumPy arrays; lists for multi-map inputs)."""
    if name == "_ReshapeAnchors":
        return [_rand(rng, 2, 3, 3, 8)]
    if name == "PyramidAnchors":
        return [np.zeros((1, 32, 48, 3), "float32")]
    if name == "PyramidROIAlign":
        fmaps = [_rand(rng, 1, 64 // s, 64 // s, 2) for s in (4, 8, 16, 32)]
        boxes = np.array([[[0.1, 0.1, 0.2, 0.2], [0.0, 0.0, 0.9, 0.9],
                           [0.3, 0.2, 0.6, 0.5], [0.5, 0.5, 0.55, 0.6]]], "float32")
        return [boxes, np.zeros((1, 64, 64, 3), "float32"), fmaps]
    if name == "DetectionLayer":
        return [_boxes(rng, (1, 6)), _probs(rng, 1, 6, 3), 0.5 * _rand(rng, 1, 6, 3, 4),
                np.array([[0.05, 0.0, 0.95, 1.0]], "float32")]
    if name == "TrimDetections":
        det = np.zeros((2, 5, 6), "float32")
        det[0, :3, :4] = _boxes(rng, (3,))
        det[0, :3, 4] = 1
        det[1, :1, :4] = _boxes(rng, (1,))
        det[1, :1, 4] = 2
        return [det]
    if name == "PadDetections":
        return [_rand(rng, 1, 2, 3, 3, 2)]
    if name == "WindowFromMeta":
        meta = np.zeros((1, 14), "float32")
        meta[0, 7:11] = [4, 2, 28, 44]
        return [meta, np.zeros((1, 32, 48, 3), "float32")]
    if name == "ProposalLayer":
        return [_probs(rng, 1, 20, 2), 0.3 * _rand(rng, 1, 20, 4), _boxes(rng, (20,))]
    if name == "FoldRois":
        return [_rand(rng, 2, 3, 4, 4, 2)]
    if name == "UnfoldRois":
        return [_rand(rng, 6, 5), _rand(rng, 2, 3, 7)]
    if name == "TakeFirst":
        return [_rand(rng, 2, 5, 3)]
    if name == "DetectionTargetLayer":
        gt_boxes = _boxes(rng, (1, 3))
        proposals = np.concatenate([gt_boxes + 0.01, _boxes(rng, (1, 7))], axis=1)
        masks = rng.random((1, 14, 14, 3)) > 0.4
        return [proposals, np.array([[1, 2, 0]], "int32"), gt_boxes * [[[1], [1], [0]]], masks]
    if name == "NormBoxes":
        boxes = _boxes(rng, (1, 3), scale=32.0)
        boxes[0, 2] = 0  # a padding row stays zero
        return [boxes, np.zeros((1, 32, 48, 3), "float32")]
    if name == "FrozenBatchNorm":
        return [_rand(rng, 2, 4, 4, 3)]
    raise KeyError(name)


#: class -> constructor kwargs (non-default values, so a dropped config entry changes the layer).
CASES = {
    _ReshapeAnchors: {"n": 4},
    PyramidAnchors: {"scales": [8.0, 16.0], "ratios": [0.5, 1.0, 2.0], "strides": [4, 8],
                     "anchor_stride": 2},
    PyramidROIAlign: {"pool_shape": [3, 5]},
    DetectionLayer: {"max_instances": 5, "min_confidence": 0.2, "nms_threshold": 0.4,
                     "bbox_std_dev": [0.1, 0.1, 0.3, 0.3]},
    TrimDetections: {},
    PadDetections: {"size": 4},
    WindowFromMeta: {},
    ProposalLayer: {"proposal_count": 5, "nms_threshold": 0.6, "pre_nms_limit": 12,
                    "rpn_bbox_std_dev": [0.1, 0.1, 0.25, 0.25]},
    FoldRois: {},
    UnfoldRois: {},
    TakeFirst: {"n": 2},
    DetectionTargetLayer: {"rois_per_image": 6, "positive_ratio": 0.5,
                           "bbox_std_dev": [0.1, 0.1, 0.3, 0.3], "mask_shape": [7, 7],
                           "use_mini_mask": True, "seed": 3},
    NormBoxes: {},
    FrozenBatchNorm: {"train_bn": False, "epsilon": 0.01, "momentum": 0.9},
}


def _package_layer_classes():
    """Every keras Layer subclass (not Model) defined in a module of the mrcnn_nuclei package."""
    found = set()
    for info in pkgutil.walk_packages(mrcnn_nuclei.__path__, "mrcnn_nuclei."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, keras.layers.Layer) and not issubclass(obj, keras.Model) \
                    and obj.__module__ == module.__name__:
                found.add(obj)
    return found


def test_every_custom_layer_has_a_case():
    missing = {c.__module__ + "." + c.__name__ for c in _package_layer_classes()} - \
        {c.__module__ + "." + c.__name__ for c in CASES}
    assert not missing, f"add a case to CASES in {__file__} for: {sorted(missing)}"


def _plain(v):
    """Config values as JSON would give them back (tuples -> lists)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _call(layer, args):
    out = layer(*[keras.ops.convert_to_tensor(a) if not isinstance(a, list) else
                  [keras.ops.convert_to_tensor(x) for x in a] for a in args])
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [keras.ops.convert_to_numpy(o) for o in outs]


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_config_round_trip_and_same_output(cls):
    kwargs = CASES[cls]
    layer = cls(**kwargs, name=f"case_{cls.__name__.lower()}")
    config = layer.get_config()
    for key, value in kwargs.items():  # every constructor argument is in the config
        assert key in config, f"{cls.__name__}.get_config() lacks {key!r}"
        assert _plain(config[key]) == pytest.approx(_plain(value)) if not isinstance(
            value, bool) else config[key] is value, (key, config[key], value)

    rebuilt = cls.from_config(config)
    assert type(rebuilt) is cls
    assert rebuilt.get_config() == config

    # through the registered name, as a saved .keras model is read back
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is cls and restored.get_config() == config

    args = _inputs(cls.__name__, np.random.default_rng(0))
    first = _call(layer, args)
    if layer.weights:  # give the layer non-trivial weights and copy them over
        rng = np.random.default_rng(1)
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                           for w in layer.get_weights()])
        first = _call(layer, args)
        _call(rebuilt, args)  # build
        rebuilt.set_weights(layer.get_weights())
    second = _call(rebuilt, args)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.shape == b.shape and a.size > 0
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
