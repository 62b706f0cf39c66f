"""Inference pre- and post-processing around the graph: :func:`mold_inputs` (images -> molded
images and image metas) and :func:`unmold_detections` (graph outputs -> boxes and full-size masks
at the original image size).  Plain functions of the config; ``MaskRCNN.mold_inputs`` and
``MaskRCNN.unmold_detections`` delegate here.

``config.RESIZE_SEMANTICS`` selects the resize and mask-unmolding arithmetic
(:mod:`mrcnn_nuclei.data.image_ops`): "matterport" (default) gives exactly what Matterport's
``MaskRCNN.mold_inputs`` / ``unmold_detections`` give; "project" keeps the edge-clamped variant.
"""

from __future__ import annotations

import numpy as np

from .data import image_ops as IO

__all__ = ["mold_inputs", "unmold_detections", "paste_soft", "upsample2_project"]


def mold_inputs(images, config):
    """List of images -> (molded list of [H, W, C] float32, image_metas [N, META] float32,
    windows list of (y1, x1, y2, x2)).

    Each image goes through data.convert.to_uint8 (grey, RGBA, 16-bit, float), invert_bright
    (IMAGE_INVERT_BRIGHT), resize_image
    with the config's IMAGE_RESIZE_MODE ("crop" is read as "square": no random crops at
    inference), IMAGE_MIN_DIM, IMAGE_MAX_DIM, IMAGE_MIN_SCALE and RESIZE_SEMANTICS, then
    mold_image (minus MEAN_PIXEL).  Shapes may differ between images (pad64).
    """
    from .data.convert import invert_bright, to_uint8

    c = config
    semantics = c.RESIZE_SEMANTICS
    molded, metas, windows = [], [], []
    for i, image in enumerate(images):
        try:
            img = to_uint8(np.asarray(image), int(c.IMAGE_CHANNEL_COUNT))
        except Exception as err:  # name the offending image
            raise ValueError(f"detect(): image #{i} (shape {np.shape(image)}, dtype "
                             f"{np.asarray(image).dtype}) cannot be converted: {err}") from err
        img = invert_bright(img, c.IMAGE_INVERT_BRIGHT)
        mode = "square" if c.IMAGE_RESIZE_MODE == "crop" else c.IMAGE_RESIZE_MODE
        out, window, scale = _resize_for_inference(img, c, mode, semantics)
        molded.append(IO.mold_image(out, c))
        metas.append(IO.compose_image_meta(0, img.shape, out.shape, window, scale,
                                           np.zeros([c.NUM_CLASSES], np.int32)))
        windows.append(window)
    return molded, np.stack(metas), windows


def _resize_for_inference(img, c, mode, semantics):
    """``IO.resize_image`` of a uint8 image with the config's sizes -> (image, window, scale).

    The from-scratch recipe's case (``pad64``, "project" semantics, scale exactly 2) takes
    :func:`upsample2_project` (the same pixels, ~7x faster than skimage's resize on 1024 px
    images), then ``resize_image`` only pads; any other case is ``resize_image`` itself."""
    h, w = img.shape[:2]
    scale = max(1.0, c.IMAGE_MIN_DIM / min(h, w)) if c.IMAGE_MIN_DIM else 1.0
    if c.IMAGE_MIN_SCALE and scale < c.IMAGE_MIN_SCALE:
        scale = float(c.IMAGE_MIN_SCALE)
    if mode == "pad64" and semantics == "project" and scale == 2.0 and img.dtype == np.uint8:
        out, window, _, _, _ = IO.resize_image(upsample2_project(img), mode="pad64",
                                               semantics=semantics)
        return out, window, 2.0
    out, window, scale, _, _ = IO.resize_image(img, min_dim=c.IMAGE_MIN_DIM,
                                               min_scale=c.IMAGE_MIN_SCALE,
                                               max_dim=c.IMAGE_MAX_DIM, mode=mode,
                                               semantics=semantics)
    return out, window, scale


def upsample2_project(image):
    """Twice the size of a uint8 image ``[H, W(, C)]`` -> ``[2H, 2W(, C)]`` uint8, equal to
    ``data.image_ops.resize(image, (2H, 2W))`` ("project": skimage order-1, edge-clamped,
    rounded half to even).

    At scale 2 each output pixel is ``(9a + 3b + 3c + d) / 16`` of its four nearest input
    pixels (weights 3/4 and 1/4 per axis, edge pixels repeated), a value that float64 holds
    exactly whatever the order of the sums; here it is summed in uint16 (at most 16 * 255)
    and rounded the same way, so the result is the same bit for bit.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"upsample2_project: expected a uint8 [H, W(, C)] image, got "
                         f"{a.dtype} {a.shape}")
    v = _up2_axis(_up2_axis(a.astype(np.uint16), 0), 1)  # 16 x the interpolated value
    q, r = v >> 4, v & 15
    q += (r > 8) | ((r == 8) & (q & 1).astype(bool))  # round half to even, as np.rint
    return q.astype(np.uint8)


def _up2_axis(a, axis):
    """4 x the scale-2 linear interpolation along ``axis`` (3 * own + 1 * nearer neighbour)."""
    a = np.moveaxis(a, axis, 0)
    out = np.empty((2 * a.shape[0],) + a.shape[1:], a.dtype)
    even, odd = out[0::2], out[1::2]
    np.multiply(a, 3, out=even)
    odd[...] = even
    even[1:] += a[:-1]
    even[0] += a[0]
    odd[:-1] += a[1:]
    odd[-1] += a[-1]
    return np.moveaxis(out, 0, axis)


def unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape, window, config,
                      soft=False):
    """One image's graph outputs -> results at the original image size.

    detections: [D, 6] (y1, x1, y2, x2 normalised in the molded image, class_id, score), zero
    rows after the last detection; mrcnn_mask: [D, h, w, NUM_CLASSES] float; original_image_shape:
    (H, W[, C]); image_shape: the molded image's (Hm, Wm[, C]); window: (y1, x1, y2, x2) of the
    image inside the molded one.  Box arithmetic is Matterport's (float32 window, float64
    denormalisation); boxes are then clipped to the image and empty ones dropped (the same as
    Matterport's for boxes inside the image).
    Returns rois [N, 4] int32, class_ids [N] int32, scores [N] float32, masks [H, W, N] bool and,
    with ``soft``, soft masks [H, W, N] float32 (the resized mask values before thresholding),
    else None.
    """
    semantics = config.RESIZE_SEMANTICS
    detections = np.asarray(detections)
    zero = np.flatnonzero(detections[:, 4] == 0)
    n = int(zero[0]) if len(zero) else len(detections)
    det = detections[:n]
    class_ids = det[:, 4].astype(np.int32)
    scores = det[:, 5].astype(np.float32)
    masks = np.asarray(mrcnn_mask)[np.arange(n), :, :, class_ids] if n else \
        np.zeros((0,) + tuple(mrcnn_mask.shape[1:3]), np.float32)
    # window normalised like Matterport's norm_boxes (float32), boxes shifted in float32
    wy1, wx1, wy2, wx2 = IO.norm_boxes(np.asarray(window), image_shape[:2])
    shift = np.array([wy1, wx1, wy1, wx1])
    scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    boxes = np.divide(det[:, :4] - shift, scale)
    boxes = np.asarray(IO.denorm_boxes(boxes, original_image_shape[:2]), np.int32).reshape(-1, 4)
    oh, ow = int(original_image_shape[0]), int(original_image_shape[1])
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, oh)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, ow)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]
    if semantics == "matterport" or not soft:
        full, softs = IO.paste_masks(masks, boxes, (oh, ow), semantics=semantics, soft=soft)
        if soft and softs is None:
            softs = np.zeros((oh, ow, 0), np.float32)
        return boxes, class_ids, scores, full, softs
    full, _ = IO.paste_masks(masks, boxes, (oh, ow), semantics=semantics)
    softs = np.zeros((oh, ow, len(boxes)), np.float32)
    for k in range(len(boxes)):  # project soft masks: edge-clamped bilinear per box
        softs[:, :, k] = paste_soft(masks[k], boxes[k], (oh, ow))
    return boxes, class_ids, scores, full, softs


def paste_soft(mask, box, shape):
    """Project semantics: edge-clamped bilinear resize of mask [h, w] into pixel box
    (y1, x1, y2, x2) of a zero image [H, W] -> [H, W] float32."""
    y1, x1, y2, x2 = (int(v) for v in box)
    out = np.zeros(shape[:2], np.float32)
    bh, bw = y2 - y1, x2 - x1
    if bh <= 0 or bw <= 0:
        return out
    mh, mw = mask.shape
    ys = np.clip((np.arange(bh) + 0.5) * mh / bh - 0.5, 0, mh - 1)
    xs = np.clip((np.arange(bw) + 0.5) * mw / bw - 0.5, 0, mw - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1i = np.minimum(y0 + 1, mh - 1)
    x1i = np.minimum(x0 + 1, mw - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    m = np.asarray(mask, np.float32)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1i] * fx
    bot = m[y1i][:, x0] * (1 - fx) + m[y1i][:, x1i] * fx
    out[y1:y2, x1:x2] = top * (1 - fy) + bot * fy
    return out
