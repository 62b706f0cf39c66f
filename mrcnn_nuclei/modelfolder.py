"""A model is a folder that describes itself: weights, config and post-processing together.

    folder/
      weights.weights.h5   Keras 3 weights (mrcnn_nuclei.weights.save_weights)
      config.json          the Config (Config.save_json; the same name as in run folders)
      postprocess.json     the post-processing settings (:class:`PostProcess`)

:func:`save_model` writes the three files in one call; :func:`load_model` (also
``MaskRCNN.from_folder``) gives back a ready inference model: the config read and set for
inference (:func:`mrcnn_nuclei.config.inference_config`), the weights loaded (an error naming
the layers when the file leaves some unfilled), and ``model.postprocess`` holding the settings
that :func:`mrcnn_nuclei.evaluation.evaluate_dataset`, the ``detect`` command and
:func:`detect` (``model.detect`` plus the post-processing) apply.

``load_model`` also takes a weights file instead of a folder (a training checkpoint): its config
is found by :func:`mrcnn_nuclei.weights.find_config_beside` (``<stem>.json`` beside it, then
the folder's ``config.json``) and ``postprocess.json`` of its folder is used when present.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .weights.beside import CONFIG_NAME, find_config_beside

__all__ = ["PostProcess", "save_model", "load_model", "detect", "inference_config_for",
           "update_postprocess", "WEIGHTS_NAME", "POSTPROCESS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "weights.weights.h5"
POSTPROCESS_NAME = "postprocess.json"


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """Post-processing of one image's detections (applied after ``MaskRCNN.detect``).

    score_threshold: drop detections scoring below it (the config's DETECTION_MIN_CONFIDENCE
        already applies inside the graph; 0 adds nothing).
    min_size: drop instances with fewer pixels (after overlaps are resolved; instances left
        without pixels are always dropped).
    overlap: who gets a pixel covered by several masks: ``"score"`` (the higher score; ties to
        the earlier detection) or ``"area"`` (the larger mask): the one rule of
        :func:`mrcnn_nuclei.metrics.masks_to_label`.
    mask_threshold: mask probability at which a pixel belongs to a nucleus (0.5 is the model's
        own; another value runs ``detect_soft`` and thresholds its soft masks).
    fill_holes: fill holes inside each mask (overlaps resolved again afterwards).
    """

    score_threshold: float = 0.0
    min_size: int = 0
    overlap: str = "score"
    mask_threshold: float = 0.5
    fill_holes: bool = False

    def __post_init__(self):
        if self.overlap not in ("score", "area"):
            raise ValueError(f"PostProcess.overlap={self.overlap!r}: use 'score' or 'area'")
        if not 0.0 <= float(self.mask_threshold) <= 1.0:
            raise ValueError(f"PostProcess.mask_threshold={self.mask_threshold}: must be in "
                             "[0, 1]")
        if int(self.min_size) < 0:
            raise ValueError(f"PostProcess.min_size={self.min_size}: must be >= 0 pixels")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, where="post-processing settings"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes):
        """A copy with the ``changes`` that are not None."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def detect(self, model, image):
        """One image's detection dict from a MaskRCNN (anything with ``detect(images)``: TTA,
        ensembles), masks at ``mask_threshold`` (another value than 0.5 needs ``detect_soft``)."""
        if float(self.mask_threshold) == 0.5:
            return model.detect([image])[0]
        if not hasattr(model, "detect_soft"):
            raise TypeError(f"PostProcess.mask_threshold={self.mask_threshold} needs a model with "
                            f"detect_soft (soft masks); {type(model).__name__} has none")
        r = model.detect_soft([image])[0]
        r["masks"] = r["soft_masks"] >= float(self.mask_threshold)
        return r

    def apply(self, r, image_shape):
        """Resolved, filtered instances of one detection dict.

        Args: ``r`` with ``masks [H, W, N]`` bool and optional ``scores [N]``,
        ``class_ids [N]``; ``image_shape`` of the input image.
        Returns ``(masks [H, W, K] bool, scores [K] float64, class_ids [K] int64)``, no two
        masks sharing a pixel, best-scoring first as given.
        """
        from . import postprocess

        masks, scores, class_ids = self.arrays(r, image_shape)
        if self.score_threshold:
            keep = scores >= float(self.score_threshold)
            masks, scores, class_ids = masks[..., keep], scores[keep], class_ids[keep]
        masks = postprocess.resolve_overlaps(masks > 0, scores, self.overlap)
        if self.fill_holes:
            masks = postprocess.resolve_overlaps(postprocess.fill_holes(masks), scores,
                                                 self.overlap)
        keep = masks.sum(axis=(0, 1)) >= max(int(self.min_size), 1)  # also drops emptied masks
        return masks[..., keep], scores[keep], class_ids[keep]

    @staticmethod
    def arrays(r, image_shape):
        """The checked arrays of one detection dict: ``(masks [H, W, N] as given, scores [N]
        float64, class_ids [N] int64)`` (ones where absent); KeyError / ValueError naming what
        is wrong otherwise."""
        if "masks" not in r:
            raise KeyError("the detection dict has no 'masks' entry; the detector must return "
                           "{'rois', 'class_ids', 'scores', 'masks' [H, W, N]} like "
                           "MaskRCNN.detect")
        masks = np.asarray(r["masks"])
        if masks.ndim != 3 or masks.shape[:2] != tuple(image_shape[:2]):
            raise ValueError(f"detection masks have shape {masks.shape} but the image is "
                             f"{tuple(image_shape[:2])}: masks must be [H, W, N] at image size")
        n = masks.shape[-1]
        scores = np.asarray(r.get("scores", np.ones(n)), np.float64).ravel()
        class_ids = np.asarray(r.get("class_ids", np.ones(n)), np.int64).ravel()
        if scores.size != n or class_ids.size != n:
            raise ValueError(f"detection has {n} masks but {scores.size} scores and "
                             f"{class_ids.size} class_ids")
        return masks, scores, class_ids


def detect(model, images, postprocess=None):
    """``model.detect(images)`` with the post-processing applied: one Matterport-style dict per
    image (``rois`` [K, 4] from the kept masks, ``class_ids``, ``scores``, ``masks`` [H, W, K]),
    settings from ``postprocess``, else ``model.postprocess`` (a loaded model folder's), else
    the defaults."""
    from .data.image_ops import extract_bboxes

    settings = _settings(postprocess if postprocess is not None
                         else getattr(model, "postprocess", None))
    out = []
    for image in images:
        masks, scores, class_ids = settings.apply(settings.detect(model, image), np.shape(image))
        out.append({"rois": extract_bboxes(masks).astype(np.int32),
                    "class_ids": class_ids.astype(np.int32),
                    "scores": scores.astype(np.float32), "masks": masks})
    return out


# ------------------------------------------------------------------------------------ saving
def save_model(model, folder, postprocess=None):
    """Write ``model`` (a MaskRCNN, training or inference) as a model folder; returns the folder.

    postprocess: a :class:`PostProcess`, a dict of its fields, or None (``model.postprocess``
    if it has one, else the defaults). Each file is written atomically; an existing folder's
    three files are replaced.
    """
    from .fileio import atomic_write_text
    from .weights import save_weights

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    settings = _settings(postprocess if postprocess is not None
                         else getattr(model, "postprocess", None))
    save_weights(model.keras_model, os.path.join(folder, WEIGHTS_NAME))
    model.config.save_json(os.path.join(folder, CONFIG_NAME))
    atomic_write_text(os.path.join(folder, POSTPROCESS_NAME),
                      json.dumps(settings.to_dict(), indent=2))
    return folder


def update_postprocess(folder, **changes):
    """Change some post-processing settings of a model folder (e.g. ``mask_threshold=0.45,
    score_threshold=0.7``): ``postprocess.json`` is read (defaults when absent), the
    ``changes`` applied and checked (:class:`PostProcess`) and the file replaced atomically.
    Returns the new :class:`PostProcess`. The weights and config are not touched."""
    from .fileio import atomic_write_text

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"update_postprocess: {folder} is not a model folder (pass the "
                                "folder written by save_model, not a file)")
    _weights_in(folder)  # FileNotFoundError without weights.weights.h5
    path = os.path.join(folder, POSTPROCESS_NAME)
    current = PostProcess()
    if os.path.exists(path):
        with open(path) as f:
            current = PostProcess.from_dict(json.load(f), path)
    unknown = sorted(set(changes) - set(current.to_dict()))
    if unknown:
        raise ValueError(f"update_postprocess: unknown setting(s) {unknown}; known: "
                         f"{sorted(current.to_dict())}")
    new = dataclasses.replace(current, **changes)
    atomic_write_text(path, json.dumps(new.to_dict(), indent=2))
    return new


def _settings(value):
    if value is None:
        return PostProcess()
    if isinstance(value, PostProcess):
        return value
    if isinstance(value, dict):
        return PostProcess.from_dict(value)
    raise TypeError(f"postprocess must be a PostProcess, a dict of its fields or None, got "
                    f"{type(value).__name__}")


# ------------------------------------------------------------------------------------ loading
def _weights_in(path):
    """(weights file, folder) of a model folder or a weights file; FileNotFoundError naming
    what is missing."""
    path = os.fspath(path)
    if os.path.isdir(path):
        weights = os.path.join(path, WEIGHTS_NAME)
        if not os.path.exists(weights):
            found = sorted(n for n in os.listdir(path) if n.endswith(".h5"))
            raise FileNotFoundError(
                f"{path} is not a model folder: no {WEIGHTS_NAME} in it"
                + (f" (it holds {', '.join(found[:5])}: pass one of those files)" if found else "")
                + "; write one with mrcnn_nuclei.save_model(model, folder)")
        return weights, path
    if not os.path.exists(path):
        raise FileNotFoundError(f"model not found: {path} (pass a folder written by save_model "
                                "or a weights file with its config JSON beside it)")
    return path, os.path.dirname(os.path.abspath(path))


def inference_config_for(path, default=None, config_class=None, **overrides):
    """The inference config of a model folder or weights file (``path``): its saved config
    (:func:`~mrcnn_nuclei.weights.find_config_beside`) set for inference
    (:func:`~mrcnn_nuclei.config.inference_config`, ``overrides`` last).

    default: config used when no config JSON is found (None: FileNotFoundError naming the places
    looked). config_class: class that rebuilds the JSON (default Config; pass your subclass when
    the config has a callable BACKBONE).
    """
    from .config import Config, inference_config

    weights, _ = _weights_in(path) if path is not None else (None, None)
    found = find_config_beside(weights) if weights else None
    if found is None:
        if default is None:
            raise FileNotFoundError(
                f"no config JSON for {weights}: looked for {os.path.splitext(weights)[0]}.json "
                f"and {CONFIG_NAME} in its folder; save models with save_model(model, folder)")
        return inference_config(default, **overrides)
    cls = config_class or Config
    return inference_config(cls.from_dict(cls.read_json(found)), **overrides)


def load_model(path, allow_partial=False, config_class=None, model_dir=None, postprocess=None,
               default_config=None, config=None, **config_overrides):
    """A ready inference MaskRCNN from a model folder (or a weights file with its config).

    allow_partial: accept a weights file that leaves layers unfilled (else
    :class:`~mrcnn_nuclei.weights.PartialWeightsError`). config_class: see
    :func:`inference_config_for`. model_dir: the model's ``model_dir`` (default the folder).
    default_config: config for a weights file without a config JSON (None: an error).
    config: a ready inference config used as is instead of the saved one (e.g. tile-sized).
    postprocess: settings replacing the folder's ``postprocess.json``. config_overrides:
    upper-case Config attributes, e.g. ``DETECTION_MIN_CONFIDENCE=0.7``.
    Returns the MaskRCNN with ``.postprocess`` (a :class:`PostProcess`) and ``.source`` (the
    weights file loaded).
    """
    from .model import MaskRCNN

    weights, folder = _weights_in(path)
    if config is None:
        config = inference_config_for(weights, default=default_config,
                                      config_class=config_class, **config_overrides)
    model = MaskRCNN("inference", config, model_dir=model_dir or folder)
    model.load_weights(weights, by_name=True, allow_partial=allow_partial)
    if postprocess is None:
        saved = os.path.join(folder, POSTPROCESS_NAME)
        if os.path.exists(saved):
            with open(saved) as f:
                postprocess = PostProcess.from_dict(json.load(f), saved)
    model.postprocess = _settings(postprocess)
    model.source = weights
    return model
