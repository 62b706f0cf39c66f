"""What :meth:`MaskRCNN.detect`, ``detect_soft`` and ``detect_molded`` do, step by step:
check the inputs (:mod:`.inputs`), mold them, bound the memory before the graph runs
(:mod:`.memory`; past the bound an error, or with ``AUTO_TILE`` a tiled run), run the inference
graph in batches of equal molded shape (:func:`run_graph`), and unmold each image's detections.

``model`` is a :class:`mrcnn_nuclei.model.MaskRCNN` in inference mode; its ``mold_inputs`` and
``unmold_detections`` are called (so a subclass overriding them, as in Matterport, is honoured).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["run_graph", "detect", "detect_molded"]

logger = logging.getLogger(__name__)


def run_graph(keras_model, config, molded, metas, verbose=0, fn="detect"):
    """Run the inference graph on molded images grouped by shape, ``BATCH_SIZE`` at a time.

    molded: list of [H, W, IMAGE_CHANNEL_COUNT] float32 (H, W multiples of 64); metas: their
    image_metas.  Returns per image ``(detections [D, 6], mrcnn_mask [D, h, w, NUM_CLASSES])``,
    read from the graph's outputs by name.  Warns (DetectionLimitWarning) for an image whose
    detections fill DETECTION_MAX_INSTANCES.
    """
    from ..model import log
    from .memory import warn_if_full

    out = [None] * len(molded)
    groups = {}
    for i, m in enumerate(molded):
        groups.setdefault(tuple(m.shape), []).append(i)
    bs = max(1, int(config.BATCH_SIZE))
    for shape, idx in groups.items():
        if len(shape) != 3 or shape[2] != config.IMAGE_CHANNEL_COUNT:
            raise ValueError(f"molded images must be [H, W, {config.IMAGE_CHANNEL_COUNT}]"
                             f" (IMAGE_CHANNEL_COUNT), got {shape}")
        if shape[0] % 64 or shape[1] % 64:
            raise ValueError(f"molded image size {shape[:2]} must be a multiple of 64; use "
                             "IMAGE_RESIZE_MODE 'square' or 'pad64'")
        for s in range(0, len(idx), bs):
            chunk = idx[s:s + bs]
            x = np.stack([molded[i] for i in chunk]).astype(np.float32)
            meta = np.stack([metas[i] for i in chunk]).astype(np.float32)
            if verbose:
                log("molded_images", x)
                log("image_metas", meta)
            res = keras_model.predict_on_batch([x, meta])  # dict: network.INFERENCE_OUTPUTS
            for j, i in enumerate(chunk):
                out[i] = (np.asarray(res["detections"][j]), np.asarray(res["mrcnn_mask"][j]))
                warn_if_full(config, out[i][0], i, shape, fn)
    return out


def _check_mode(model):
    if model.mode != "inference":
        raise ValueError("detect() needs a model built with mode='inference'")


def detect(model, images, soft=False, verbose=0):
    """``model.detect(images)`` (``soft``: ``detect_soft``): one result dict per image (see
    :meth:`MaskRCNN.detect`)."""
    from . import memory as M
    from .inputs import check_detect_images
    from .tiling import detect_tiled

    c = model.config
    fn = "detect_soft" if soft else "detect"
    images = check_detect_images(images, c.IMAGE_CHANNEL_COUNT, fn)
    if not images:
        return []
    molded, metas, windows = model.mold_inputs(images)
    shapes = [np.shape(image) for image in images]
    over = dict(M.over_limit(c, [m.shape for m in molded], shapes, soft))
    if over and (not c.AUTO_TILE or soft or c.NUM_CLASSES > 2):
        i, need = next(iter(over.items()))
        why = ("" if not c.AUTO_TILE else " (AUTO_TILE does not apply: " +
               ("detect_soft() has no tiled soft masks)" if soft else
                "tiled results carry no class ids with NUM_CLASSES > 2)"))
        raise M.DetectMemoryError(M.over_limit_message(c, fn, i, need, molded[i].shape,
                                                       shapes[i]) + why)
    results = [None] * len(images)
    for i, need in over.items():
        logger.warning("%s(): image #%d (%dx%d) needs about %.1f GB, over "
                       "DETECT_MEMORY_LIMIT_GB; running tiled_detect on it (AUTO_TILE = True)",
                       fn, i, shapes[i][0], shapes[i][1], need / 1e9)
        results[i] = detect_tiled(model, images[i])
    todo = [i for i in range(len(images)) if i not in over]
    _check_mode(model)
    outs = run_graph(model.keras_model, c, [molded[i] for i in todo], [metas[i] for i in todo],
                     verbose, fn)
    for i, (det, mask) in zip(todo, outs):
        rois, ids, scores, masks, softs = model.unmold_detections(
            det, mask, shapes[i], molded[i].shape, windows[i], soft=soft)
        r = {"rois": rois, "class_ids": ids, "scores": scores, "masks": masks}
        if soft:
            r["soft_masks"] = softs
        results[i] = r
    return results


def detect_molded(model, molded_images, image_metas, verbose=0):
    """``model.detect_molded(molded_images, image_metas)`` (see :meth:`MaskRCNN.detect_molded`):
    original sizes and windows are read from the metas; past the memory bound it always raises."""
    from ..data.image_ops import parse_image_meta
    from . import memory as M
    from .inputs import check_molded_images

    c = model.config
    molded = check_molded_images(molded_images, c.IMAGE_CHANNEL_COUNT)
    if not molded:
        return []
    metas = np.asarray(image_metas, np.float32).reshape(len(molded), -1)
    parsed = parse_image_meta(metas)
    origs = [tuple(int(v) for v in o) for o in parsed["original_image_shape"]]
    over = M.over_limit(c, [m.shape for m in molded], origs)
    if over:
        i, need = over[0]
        raise M.DetectMemoryError(M.over_limit_message(
            c, "detect_molded", i, need, molded[i].shape, origs[i]))
    _check_mode(model)
    outs = run_graph(model.keras_model, c, molded, metas, verbose, "detect_molded")
    results = []
    for i, (det, mask) in enumerate(outs):
        rois, ids, scores, masks, _ = model.unmold_detections(
            det, mask, origs[i], molded[i].shape, parsed["window"][i])
        results.append({"rois": rois, "class_ids": ids, "scores": scores, "masks": masks})
    return results
