"""Pluggable tile segmenters for whole-slide runs, loaded once per worker process.

A segmenter SPEC is a small picklable description sent to Dask workers; :func:`get_segmenter`
turns it into a loaded segmenter and caches it in the worker process (module-level dict keyed by
the spec's ``key``, which includes the weights file's size and modification time), so a worker
builds the Mask R-CNN graph and reads the weights once and reuses them for every tile.

* :class:`ClassicalSpec`: a deterministic classical segmenter (hematoxylin threshold, binary
  opening, connected components), the one the tiling tests use.  No model, no TensorFlow: for
  tests and for checking a pipeline end to end.
* :class:`MaskRCNNSpec`: a trained :class:`~mrcnn_nuclei.model.MaskRCNN` from a weights file
  (``name.weights.h5`` with ``name.json``, the config :func:`mrcnn_nuclei.weights.save_weights`
  writes beside) or a folder holding one.

A loaded segmenter is called on an RGB tile [h, w, 3] uint8 and returns
(ys, xs, ks, scores, class_ids): the instance pixels (tile-local), their instance index, and per
instance a score and a class id (1-based, as Mask R-CNN's).
"""

from __future__ import annotations

import glob
import os
import threading
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClassicalSpec", "MaskRCNNSpec", "get_segmenter", "make_spec", "resolve_weights",
           "class_names_for"]

_CACHE = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ClassicalSpec:
    """Hematoxylin > ``threshold`` (0..255, :func:`mrcnn_nuclei.stain.hematoxylin_channel`),
    ``opening`` iterations of binary opening, 4-connected components; score = the component's
    mean hematoxylin / 255."""

    threshold: int = 110
    opening: int = 2
    class_names: tuple = ("nucleus",)

    @property
    def key(self):
        return ("classical", self.threshold, self.opening)

    def describe(self):
        return {"segmenter": "classical", "threshold": self.threshold, "opening": self.opening}

    def load(self):
        return _Classical(self)


class _Classical:
    def __init__(self, spec):
        self.spec = spec

    def __call__(self, tile):
        from scipy import ndimage

        from ..stain import hematoxylin_channel

        h = hematoxylin_channel(tile)
        fg = h > self.spec.threshold
        if self.spec.opening:
            fg = ndimage.binary_opening(fg, iterations=int(self.spec.opening))
        labels, n = ndimage.label(fg)
        ys, xs = np.nonzero(labels)
        ks = labels[ys, xs].astype(np.int64) - 1
        # score: mean hematoxylin of the component / 255 (deterministic, in [0, 1])
        area = np.maximum(np.bincount(ks, minlength=n), 1)
        scores = np.bincount(ks, h[ys, xs], minlength=n) / area
        return ys, xs, ks, (scores / 255.0).astype(np.float32), np.ones(n, np.int32)


def resolve_weights(path):
    """A weights file, or the newest ``*.weights.h5`` (then ``*.h5``) in a folder -> its path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "*.weights.h5")) or
                       glob.glob(os.path.join(path, "*.h5")), key=os.path.getmtime)
        if not found:
            raise FileNotFoundError(f"--weights {path}: the folder holds no *.weights.h5 / *.h5 "
                                    "file; pass the weights file itself")
        path = found[-1]
    if not os.path.exists(path):
        raise FileNotFoundError(f"--weights {path} not found")
    return os.path.abspath(path)


@dataclass(frozen=True)
class MaskRCNNSpec:
    """A Mask R-CNN weights file with its config JSON beside (see the module docstring).

    class_names: names for class ids 1..NUM_CLASSES-1 (default: PanNuke's five for a 6-class
    config, "nucleus" for one class, "class_k" otherwise).  min_confidence: overrides the
    config's DETECTION_MIN_CONFIDENCE when given.
    """

    weights: str
    class_names: tuple = ()
    min_confidence: float | None = None
    stamp: tuple = field(default=(), compare=True)

    @classmethod
    def from_path(cls, weights, class_names=(), min_confidence=None):
        path = resolve_weights(weights)
        from ..weights import config_path_beside, find_config_beside

        if find_config_beside(path) is None:
            raise FileNotFoundError(
                f"--weights {path}: no config {config_path_beside(path)} or config.json beside "
                "it; save the model with mrcnn_nuclei.save_model(model, folder) (or "
                "mrcnn_nuclei.weights.save_weights(model.keras_model, path, config)) so the "
                "config JSON is written next to the weights")
        st = os.stat(path)
        return cls(path, tuple(class_names), min_confidence, (st.st_size, int(st.st_mtime_ns)))

    @property
    def key(self):
        return ("maskrcnn", self.weights, self.stamp, self.min_confidence)

    def describe(self):
        return {"segmenter": "maskrcnn", "weights": self.weights, "size_mtime": list(self.stamp),
                "min_confidence": self.min_confidence}

    def load(self):
        return _MaskRCNN(self)


class _MaskRCNN:
    """Model built and weights loaded once; ``detect`` is serialised per model (one Keras model
    is not meant to run concurrent predict calls; use more worker processes, not threads)."""

    def __init__(self, spec):
        import tempfile

        from ..modelfolder import load_model
        from ..recipes import config_with, inference_twin
        from ..weights import load_config_beside

        config = load_config_beside(spec.weights)
        if spec.min_confidence is not None:
            config = config_with(type(config), DETECTION_MIN_CONFIDENCE=float(spec.min_confidence))
        self.config = inference_twin(config)  # tiles: pad64 at the training scale
        self.model = load_model(spec.weights, config=self.config,
                                model_dir=tempfile.gettempdir())
        self.lock = threading.Lock()

    def __call__(self, tile):
        from ..inference.tiling import _instances

        with self.lock:
            r = self.model.detect([tile], verbose=0)[0]
        ys, xs, ks, scores = _instances(r, tile.shape[:2], "Mask R-CNN tile")
        class_ids = np.asarray(r.get("class_ids", np.ones(len(scores))), np.int32)
        return ys, xs, ks, scores, class_ids


def class_names_for(spec):
    """Class names for ids 1.. of a spec (reads the config JSON beside Mask R-CNN weights)."""
    if spec.class_names:
        return tuple(spec.class_names)
    if not isinstance(spec, MaskRCNNSpec):
        return ("nucleus",)
    import json

    from ..weights import find_config_beside

    with open(find_config_beside(spec.weights)) as f:
        values = json.load(f).get("values", {})
    n = int(values.get("NUM_CLASSES", 2)) - 1
    if n == 5:
        from ..datasets.pannuke import CLASS_NAMES

        return tuple(CLASS_NAMES)
    return ("nucleus",) if n == 1 else tuple(f"class_{k}" for k in range(1, n + 1))


def make_spec(segmenter="maskrcnn", weights=None, class_names=(), min_confidence=None):
    """Spec from command-line style arguments (``segmenter``: "maskrcnn" or "classical"), or
    ``segmenter`` itself when it is already a spec (anything picklable with ``key``,
    ``describe()``, ``load()`` and ``class_names``: a pluggable segmenter of your own)."""
    if all(hasattr(segmenter, a) for a in ("key", "describe", "load")):
        return segmenter
    if segmenter == "classical":
        return ClassicalSpec()
    if segmenter != "maskrcnn":
        raise ValueError(f"--segmenter {segmenter!r}: use 'maskrcnn' or 'classical'")
    if weights is None:
        raise ValueError("--weights is required for the Mask R-CNN segmenter (or pass "
                         "--segmenter classical)")
    return MaskRCNNSpec.from_path(weights, class_names, min_confidence)


def get_segmenter(spec):
    """The loaded segmenter for ``spec`` in this process (loaded on first use, then cached)."""
    key = spec.key
    seg = _CACHE.get(key)
    if seg is None:
        with _CACHE_LOCK:
            seg = _CACHE.get(key)
            if seg is None:
                seg = _CACHE[key] = spec.load()
    return seg
