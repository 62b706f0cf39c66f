"""The only backend-specific code of the graph: non-max suppression and crop-and-resize.

Everything else in :mod:`mrcnn_nuclei.layers` is written with ``keras.ops``.  These operations
have no ``keras.ops`` equivalent, so they live here once per backend:

* TensorFlow: ``tf.raw_ops.NonMaxSuppressionV4`` and ``tf.image.crop_and_resize``;
* JAX: :func:`batched_nms_jax`, :func:`crop_and_resize_jax` and
  :func:`pyramid_crop_and_resize_jax`, static-shaped re-implementations with the same semantics
  (same selection order, same IoU formula, same sampling points, outside points read 0).

The public functions (:func:`batched_nms`, :func:`crop_and_resize`,
:func:`pyramid_crop_and_resize`) dispatch on ``keras.backend.backend()``.  The ``*_jax``
functions only need ``jax`` installed, not the JAX Keras backend, so they can be called (and
tested) with ``jax.numpy`` arrays from a TensorFlow-backend process.  Boxes are (y1, x1, y2, x2).
"""

from __future__ import annotations

import keras

__all__ = ["batched_nms", "crop_and_resize", "pyramid_crop_and_resize", "batched_nms_jax",
           "crop_and_resize_jax", "pyramid_crop_and_resize_jax"]

_SUPPORTED = ("tensorflow", "jax")


def _backend():
    name = keras.backend.backend()
    if name not in _SUPPORTED:
        raise RuntimeError(
            f"mrcnn_nuclei.layers.ops supports the backends {_SUPPORTED} (set KERAS_BACKEND); "
            f"the active backend is {name!r}")
    return name


def _tf():
    import tensorflow as tf
    return tf


# ------------------------------------------------------------------------------------- NMS
def batched_nms(boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf")):
    """Greedy NMS for every image of a batch, padded to a fixed size.

    boxes: [B, N, 4] float; scores: [B, N] float. Keeps boxes in decreasing score order (ties:
    lower index first), dropping any box whose IoU with a kept box exceeds ``iou_threshold``
    and any box whose score is not above ``score_threshold``.
    Returns (indices [B, max_output_size] int32 into N, padded with 0;
             valid [B, max_output_size] bool, True for the real entries).
    """
    if _backend() == "jax":
        return batched_nms_jax(boxes, scores, max_output_size, iou_threshold, score_threshold)
    return _batched_nms_tf(boxes, scores, max_output_size, iou_threshold, score_threshold)


def _batched_nms_tf(boxes, scores, max_output_size, iou_threshold, score_threshold):
    tf = _tf()
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    scores = tf.cast(tf.convert_to_tensor(scores), tf.float32)
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


def batched_nms_jax(boxes, scores, max_output_size, iou_threshold,
                    score_threshold=float("-inf")):
    """JAX version of :func:`batched_nms` (same arguments and results, jit/vmap friendly).

    Candidates (score > score_threshold) are sorted by score (stable, so ties keep index
    order).  A ``lax.while_loop`` then takes the best still-alive candidate, records it and
    kills every candidate whose IoU with it exceeds the threshold: one O(N) step per kept box,
    at most ``max_output_size`` steps, no N x N matrix.  The IoU is TensorFlow's formula
    (corners in any order; 0 when either box has no area).
    """
    import jax
    import jax.numpy as jnp

    boxes = jnp.asarray(boxes).astype(jnp.float32)
    scores = jnp.asarray(scores).astype(jnp.float32)
    k = int(max_output_size)
    thr = jnp.float32(iou_threshold)
    sthr = jnp.float32(score_threshold)
    n = scores.shape[-1]

    def one(b, s):
        iota = jnp.arange(n, dtype=jnp.int32)
        _, order = jax.lax.sort((-s, iota), num_keys=1, is_stable=True)
        sb = b[order]
        ymin = jnp.minimum(sb[:, 0], sb[:, 2])
        xmin = jnp.minimum(sb[:, 1], sb[:, 3])
        ymax = jnp.maximum(sb[:, 0], sb[:, 2])
        xmax = jnp.maximum(sb[:, 1], sb[:, 3])
        area = (ymax - ymin) * (xmax - xmin)
        alive = s[order] > sthr

        def cond(state):
            count, alive, _ = state
            return (count < k) & jnp.any(alive)

        def body(state):
            count, alive, out = state
            i = jnp.argmax(alive)  # first alive candidate = best remaining score
            inter = (jnp.maximum(jnp.minimum(ymax, ymax[i]) - jnp.maximum(ymin, ymin[i]), 0.0)
                     * jnp.maximum(jnp.minimum(xmax, xmax[i]) - jnp.maximum(xmin, xmin[i]), 0.0))
            iou = inter / (area + area[i] - inter)
            iou = jnp.where((area <= 0) | (area[i] <= 0), 0.0, iou)
            alive = alive & ~(iou > thr)
            alive = alive.at[i].set(False)
            out = out.at[count].set(order[i])
            return count + 1, alive, out

        init = (jnp.int32(0), alive, jnp.zeros((k,), jnp.int32))
        count, _, out = jax.lax.while_loop(cond, body, init)
        return out, count

    if n == 0:
        idx = jnp.zeros(scores.shape[:-1] + (k,), jnp.int32)
        return idx, jnp.zeros(idx.shape, bool)
    idx, count = jax.vmap(one)(boxes, scores)
    valid = jnp.arange(k, dtype=jnp.int32)[None, :] < count[:, None]
    return idx, valid


# --------------------------------------------------------------------------- crop-and-resize
def crop_and_resize(images, boxes, box_indices, crop_size, method="bilinear"):
    """Bilinear crops of normalised boxes, resized to ``crop_size``.

    images: [B, H, W, C]; boxes: [M, 4] normalised so that 0 and 1 are the centres of the
    first and last pixel (y * (H - 1) is the pixel row); box_indices: [M] int, the image of
    each box; crop_size: (h, w). Sample row i of a box is y1 * (H - 1) + i * (y2 - y1) *
    (H - 1) / (h - 1), or (y1 + y2) / 2 * (H - 1) when h == 1 (columns alike). Points outside
    the image read 0. method: "bilinear" or "nearest".
    Returns [M, h, w, C] float32.
    """
    if _backend() == "jax":
        return crop_and_resize_jax(images, boxes, box_indices, crop_size, method)
    tf = _tf()
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.float32:
        images = tf.cast(images, tf.float32)
    return tf.image.crop_and_resize(images, tf.cast(boxes, tf.float32),
                                    tf.cast(box_indices, tf.int32),
                                    [int(crop_size[0]), int(crop_size[1])], method=method)


def _sample_points(jnp, a1, a2, size, n):
    """Sampling coordinates [M, n] (pixel units) along one axis, TF's formula, float32."""
    import jax

    size_m1 = jnp.float32(size - 1)
    if n > 1:
        # the barrier keeps XLA from turning "/ (n - 1)" into "* (1 / (n - 1))", which rounds
        # differently (a sample at exactly H - 1 would land outside and read 0)
        den = jax.lax.optimization_barrier(jnp.full(a1.shape, n - 1, jnp.float32))
        scale = (a2 - a1) * size_m1 / den
        steps = jnp.arange(n, dtype=jnp.float32)
        return _rounded(jnp, a1[:, None] * size_m1) + _rounded(jnp, steps[None, :] * scale[:, None])
    return (0.5 * (a1 + a2) * size_m1)[:, None]


def _rounded(jnp, product):
    """``product`` rounded to float32 on its own: the select keeps XLA:CPU (LLVM) from fusing
    the multiply into the following add as one fused multiply-add, which rounds once and can
    move a sample at exactly 0 or H - 1 outside the image (TF's kernel rounds each step)."""
    return jnp.where(jnp.isnan(product), jnp.float32(0.0), product)


def _axis_taps(jnp, pos, size, method):
    """Per axis: (first index, second index, weight of the second, inside mask)."""
    inside = (pos >= 0) & (pos <= jnp.float32(size - 1))
    if method == "nearest":
        near = jnp.floor(pos + 0.5)  # C roundf for pos >= 0 (outside points are masked)
        i0 = jnp.clip(near, 0, size - 1).astype(jnp.int32)
        return i0, i0, jnp.zeros_like(pos), inside
    lo = jnp.floor(pos)
    hi = jnp.ceil(pos)
    frac = pos - lo
    i0 = jnp.clip(lo, 0, size - 1).astype(jnp.int32)
    i1 = jnp.clip(hi, 0, size - 1).astype(jnp.int32)
    return i0, i1, frac, inside


def _check_method(method):
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"crop_and_resize: method must be 'bilinear' or 'nearest', got "
                         f"{method!r}")


def _lerp_gather(jnp, flat, rows0, rows1, cols0, cols1, fy, fx):
    """TF's interpolation order: top = tl + (tr - tl) * fx, bottom alike, top + (bottom - top)
    * fy.  flat: [P, C] table; rows*/cols*: int index arrays that add up to positions in it."""
    tl = flat[rows0 + cols0]
    tr = flat[rows0 + cols1]
    bl = flat[rows1 + cols0]
    br = flat[rows1 + cols1]
    top = tl + (tr - tl) * fx
    bottom = bl + (br - bl) * fx
    return top + (bottom - top) * fy


def crop_and_resize_jax(images, boxes, box_indices, crop_size, method="bilinear"):
    """JAX version of :func:`crop_and_resize`: four vectorised gathers and TF's lerp order.

    Same arguments and result ([M, h, w, C] float32); differentiable with respect to
    ``images`` (gather -> scatter-add).
    """
    import jax.numpy as jnp

    _check_method(method)
    images = jnp.asarray(images)
    if images.dtype != jnp.float32:
        images = images.astype(jnp.float32)
    boxes = jnp.asarray(boxes).astype(jnp.float32)
    bix = jnp.asarray(box_indices).astype(jnp.int32)
    nb, h, w, c = images.shape
    ch, cw = int(crop_size[0]), int(crop_size[1])
    y0, y1, fy, in_y = _axis_taps(jnp, _sample_points(jnp, boxes[:, 0], boxes[:, 2], h, ch), h,
                                  method)
    x0, x1, fx, in_x = _axis_taps(jnp, _sample_points(jnp, boxes[:, 1], boxes[:, 3], w, cw), w,
                                  method)
    flat = images.reshape(nb * h * w, c)
    base = (jnp.clip(bix, 0, nb - 1) * (h * w))[:, None, None]
    rows0 = base + (y0 * w)[:, :, None]
    rows1 = base + (y1 * w)[:, :, None]
    out = _lerp_gather(jnp, flat, rows0, rows1, x0[:, None, :], x1[:, None, :],
                       fy[:, :, None, None], fx[:, None, :, None])
    inside = in_y[:, :, None, None] & in_x[:, None, :, None]
    return jnp.where(inside, out, jnp.float32(0.0))


def pyramid_crop_and_resize(feature_maps, boxes, box_indices, levels, crop_size):
    """Crop every box from the feature map of its own pyramid level.

    feature_maps: list of L maps [B, h_l, w_l, C]; boxes: [M, 4] normalised; box_indices: [M]
    int; levels: [M] int in [0, L) (position in ``feature_maps``); crop_size (h, w).
    Returns [M, h, w, C] float32 in box order: row m equals
    ``crop_and_resize(feature_maps[levels[m]], boxes[m:m+1], box_indices[m:m+1], crop_size)``.
    TensorFlow crops each level's boxes (dynamic shapes); JAX gathers from all levels at once
    (static shapes).
    """
    if _backend() == "jax":
        return pyramid_crop_and_resize_jax(feature_maps, boxes, box_indices, levels, crop_size)
    from keras import ops

    pooled, order = [], []
    for i, fmap in enumerate(feature_maps):
        sel = ops.cast(ops.reshape(ops.stack(ops.where(ops.equal(levels, i)), -1), (-1,)),
                       "int32")
        pooled.append(crop_and_resize(fmap, ops.take(boxes, sel, axis=0),
                                      ops.take(box_indices, sel, axis=0), crop_size))
        order.append(sel)
    pooled = ops.concatenate(pooled, axis=0)
    order = ops.concatenate(order, axis=0)
    return ops.take(pooled, ops.argsort(order), axis=0)


def pyramid_crop_and_resize_jax(feature_maps, boxes, box_indices, levels, crop_size):
    """JAX version of :func:`pyramid_crop_and_resize`: the levels are flattened into one
    [sum_l B*h_l*w_l, C] table and each box gathers from its own level's block, with that
    level's size in TF's sampling formula (one gather of M boxes, not L)."""
    import jax.numpy as jnp

    maps = [jnp.asarray(f) for f in feature_maps]
    maps = [f if f.dtype == jnp.float32 else f.astype(jnp.float32) for f in maps]
    boxes = jnp.asarray(boxes).astype(jnp.float32)
    bix = jnp.asarray(box_indices).astype(jnp.int32)
    levels = jnp.asarray(levels).astype(jnp.int32)
    ch, cw = int(crop_size[0]), int(crop_size[1])
    nb, c = maps[0].shape[0], maps[0].shape[-1]
    bix = jnp.clip(bix, 0, nb - 1)
    y0 = y1 = x0 = x1 = fy = fx = in_y = in_x = base = wl = None
    offset = 0
    for li, f in enumerate(maps):
        _, h, w, _ = f.shape
        ty0, ty1, tfy, tin_y = _axis_taps(
            jnp, _sample_points(jnp, boxes[:, 0], boxes[:, 2], h, ch), h, "bilinear")
        tx0, tx1, tfx, tin_x = _axis_taps(
            jnp, _sample_points(jnp, boxes[:, 1], boxes[:, 3], w, cw), w, "bilinear")
        tbase = offset + bix * (h * w)
        if li == 0:
            y0, y1, fy, in_y, x0, x1, fx, in_x, base = ty0, ty1, tfy, tin_y, tx0, tx1, tfx, \
                tin_x, tbase
            wl = jnp.full_like(bix, w)
        else:
            m = (levels == li)
            m2 = m[:, None]
            y0, y1, fy, in_y = (jnp.where(m2, ty0, y0), jnp.where(m2, ty1, y1),
                                jnp.where(m2, tfy, fy), jnp.where(m2, tin_y, in_y))
            x0, x1, fx, in_x = (jnp.where(m2, tx0, x0), jnp.where(m2, tx1, x1),
                                jnp.where(m2, tfx, fx), jnp.where(m2, tin_x, in_x))
            base = jnp.where(m, tbase, base)
            wl = jnp.where(m, w, wl)
        offset += nb * h * w
    flat = jnp.concatenate([f.reshape(-1, c) for f in maps], axis=0)
    base = base[:, None, None]
    rows0 = base + (y0 * wl[:, None])[:, :, None]
    rows1 = base + (y1 * wl[:, None])[:, :, None]
    out = _lerp_gather(jnp, flat, rows0, rows1, x0[:, None, :], x1[:, None, :],
                       fy[:, :, None, None], fx[:, None, :, None])
    inside = in_y[:, :, None, None] & in_x[:, None, :, None]
    return jnp.where(inside, out, jnp.float32(0.0))
