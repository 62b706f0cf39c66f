"""Writing predictions: COCO results JSON (RLE masks) and label-image TIFFs.

COCO results follow the format ``COCO.loadRes`` reads: one dict per instance with ``image_id``,
``category_id``, ``segmentation`` (compressed RLE, ``counts`` as an ASCII string), ``bbox``
``[x, y, width, height]`` and ``score``.  Label TIFFs hold one ``[H, W]`` image, 0 = background,
as uint16 when the largest id fits (< 65536) and uint32 otherwise.
"""

from __future__ import annotations

import json

import numpy as np

from .fileio import atomic_write, atomic_write_text
from .metrics import instance_rles, to_label

__all__ = ["coco_results", "detections_to_coco", "save_coco_json", "load_coco_json",
           "save_label_tiff", "load_label_tiff", "label_dtype"]


def _rles(masks):
    """Compressed COCO RLEs, ``[N, 4]`` xywh boxes and ids of a stack or a label image."""
    from pycocotools import mask as mask_utils

    rles, ids = instance_rles(masks, "masks")
    if not len(rles):
        return [], np.zeros((0, 4)), ids
    return rles, mask_utils.toBbox(rles).reshape(-1, 4), ids


def coco_results(image_id, masks, scores=None, category_ids=None):
    """COCO result dicts for one image.

    Args:
        image_id: the COCO image id (int, or str for your own tools).
        masks: ``[H, W, N]`` bool stack (may overlap) or ``[H, W]`` label image (instances in
            ascending id order).
        scores: ``[N]`` confidences (default 1.0). category_ids: ``[N]`` ints (default 1).
    Returns:
        list of N dicts (``image_id, category_id, segmentation, bbox, score``).
    """
    rles, boxes, _ = _rles(masks)
    n = len(rles)
    scores = np.ones(n) if scores is None else np.asarray(scores, np.float64).ravel()
    cats = np.ones(n, np.int64) if category_ids is None else np.asarray(category_ids).ravel()
    if scores.size != n or cats.size != n:
        raise ValueError(f"image {image_id!r}: masks has {n} instances but scores has "
                         f"{scores.size} and category_ids {cats.size} values (one per instance)")
    image_id = image_id.item() if isinstance(image_id, np.generic) else image_id
    out = []
    for rle, box, s, c in zip(rles, boxes, scores, cats):
        counts = rle["counts"]
        out.append({"image_id": image_id, "category_id": int(c),
                    "segmentation": {"size": [int(v) for v in rle["size"]],
                                     "counts": counts.decode("ascii") if isinstance(
                                         counts, bytes) else counts},
                    "bbox": [float(v) for v in box], "score": float(s)})
    return out


def detections_to_coco(image_id, r):
    """COCO result dicts from one ``MaskRCNN.detect`` result dict (masks, scores, class_ids)."""
    return coco_results(image_id, r["masks"], r.get("scores"), r.get("class_ids"))


def _atomic_write_text(path, text):
    return atomic_write_text(path, text)


def save_coco_json(path, results):
    """Write a list of COCO result dicts as JSON, atomically. Returns ``path``."""
    return _atomic_write_text(path, json.dumps(list(results)))


def load_coco_json(path):
    """Read a COCO results JSON written by :func:`save_coco_json`. Returns a list of dicts."""
    with open(path) as f:
        return json.load(f)


def label_dtype(label):
    """uint16 when every id fits (< 65536), else uint32; raises above 2**32 - 1."""
    top = int(np.max(label)) if np.size(label) else 0
    if top < 2 ** 16:
        return np.uint16
    if top < 2 ** 32:
        return np.uint32
    raise ValueError(f"label ids up to {top} do not fit in a uint32 TIFF; relabel them "
                     "(mrcnn_nuclei.metrics.relabel_sequential)")


def save_label_tiff(path, label):
    """Write a label image ``[H, W]`` (or a stack, converted) as a uint16/uint32 TIFF, atomically.

    Returns ``path``. The file is zlib-compressed (tifffile needs no extra codec for it).
    """
    import tifffile

    lab = to_label(label, "label")
    data = lab.astype(label_dtype(lab))
    return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib"))


def load_label_tiff(path):
    """Read a label TIFF written by :func:`save_label_tiff`. Returns ``[H, W]`` uint16/uint32."""
    import tifffile

    return tifffile.imread(path)
