"""The only backend-specific code of the graph: non-max suppression and crop-and-resize.

Everything else in :mod:`mrcnn_nuclei.layers` is written with ``keras.ops``.  These two
operations have no ``keras.ops`` equivalent, so they live here with the TensorFlow fast path
(the project runs Keras 3 on the TensorFlow backend).  Boxes are (y1, x1, y2, x2).
"""

from __future__ import annotations

import keras

__all__ = ["batched_nms", "crop_and_resize"]


def _tf():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"mrcnn_nuclei.layers.ops needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
            f"the active backend is {keras.backend.backend()!r}")
    import tensorflow as tf
    return tf


def batched_nms(boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf")):
    """Greedy NMS for every image of a batch, padded to a fixed size.

    boxes: [B, N, 4] float; scores: [B, N] float. Keeps boxes in decreasing score order,
    dropping any box whose IoU with a kept box exceeds ``iou_threshold`` and any box whose
    score is not above ``score_threshold``.
    Returns (indices [B, max_output_size] int32 into N, padded with 0;
             valid [B, max_output_size] bool, True for the real entries).
    """
    tf = _tf()
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    k = int(max_output_size)

    def one(args):
        b, s = args
        idx, n = tf.raw_ops.NonMaxSuppressionV4(
            boxes=b, scores=s, max_output_size=k, iou_threshold=float(iou_threshold),
            score_threshold=float(score_threshold), pad_to_max_output_size=True)
        idx = idx[:k]
        idx = tf.pad(idx, [[0, k - tf.shape(idx)[0]]])
        return tf.ensure_shape(idx, [k]), n

    idx, count = tf.map_fn(one, (boxes, scores),
                           fn_output_signature=(tf.TensorSpec([k], tf.int32),
                                                tf.TensorSpec([], tf.int32)))
    valid = tf.range(k)[None, :] < count[:, None]
    idx = tf.where(valid, idx, tf.zeros_like(idx))
    return idx, valid


def crop_and_resize(images, boxes, box_indices, crop_size, method="bilinear"):
    """Bilinear crops of normalised boxes, resized to ``crop_size``.

    images: [B, H, W, C]; boxes: [M, 4] normalised so that 0 and 1 are the centres of the
    first and last pixel (y * (H - 1) is the pixel row); box_indices: [M] int, the image of
    each box; crop_size: (h, w). Points outside the image read 0.
    Returns [M, h, w, C] float32.
    """
    tf = _tf()
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.float32:
        images = tf.cast(images, tf.float32)
    return tf.image.crop_and_resize(images, tf.cast(boxes, tf.float32),
                                    tf.cast(box_indices, tf.int32),
                                    [int(crop_size[0]), int(crop_size[1])], method=method)
