"""Image and mask utilities with Matterport's names, signatures and semantics (NumPy).

Boxes are (y1, x1, y2, x2) pixel boxes with y2/x2 exclusive; masks are [H, W, N] bool stacks
(see :mod:`mrcnn_nuclei.boxes` for the conventions).

Two resize semantics (``semantics=`` argument; ``Config.RESIZE_SEMANTICS`` in the loader and in
:mod:`mrcnn_nuclei.molding`):

* ``"matterport"`` (default): exactly what Matterport's ``mrcnn.utils`` returns, bit for bit
  (checked against its own outputs on real DSB images in tests/test_parity.py).  Images:
  ``skimage.transform.resize(order=1, mode="constant", cval=0, clip=True, preserve_range=True,
  anti_aliasing=False)`` truncated to the input dtype, so upscaled images get a darker outer
  pixel ring; masks: ``scipy.ndimage.zoom(order=0)`` (corner-aligned nearest); mini-masks and
  their expansion: that order-1 resize of each crop, ``np.around`` (value > 0.5); unmolded masks:
  the float32 resize ``>= 0.5``.  The order-1 resize is reproduced in vectorised NumPy (same
  sample positions, weights, summation order and clipping as scipy's C loop), so no per-instance
  skimage call is made.
* ``"project"``: pixel-centre aligned, edge-clamped bilinear (no dark border when upscaling),
  rounded to the nearest grey level; pixel-centre nearest neighbour for masks; threshold
  ``>= 0.5`` everywhere.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.ndimage
import skimage.transform

__all__ = ["resize_image", "resize_mask", "extract_bboxes", "minimize_mask", "expand_mask",
           "unmold_mask", "paste_masks", "compose_image_meta", "parse_image_meta", "mold_image",
           "unmold_image", "norm_boxes", "denorm_boxes", "resize", "SEMANTICS", "linear_axis",
           "resize_linear", "packed_nonempty", "packed_bboxes", "packed_minimize_mask",
           "packed_unpack", "META_FIELDS", "META_FIXED_SIZE", "META_IMAGE_ID",
           "META_ORIGINAL_IMAGE_SHAPE", "META_IMAGE_SHAPE", "META_WINDOW", "META_SCALE",
           "META_ACTIVE_CLASS_IDS"]

_MODES = ("none", "square", "pad64", "crop")
SEMANTICS = ("matterport", "project")


def _check_semantics(semantics, fn):
    if semantics not in SEMANTICS:
        raise ValueError(f"{fn}: semantics must be one of {SEMANTICS} (Config.RESIZE_SEMANTICS), "
                         f"got {semantics!r}")
    return semantics


# ------------------------------------------------------------------ Matterport's order-1 resize
def linear_axis(n_in, n_out, start=0, count=None):
    """Sample table of skimage's order-1 resize (scipy.ndimage.zoom, grid_mode, mode
    "grid-constant", cval 0) along one axis, for output indices start..start+count.

    n_in, n_out: int or [K] int arrays (one axis per instance).  Returns lo, hi (int64 source
    indices, clamped into range) and w0, w1 (float64 weights; 0 where the neighbour lies outside
    the input, i.e. contributes cval = 0), each [count] or [K, count].  The arithmetic is the C
    loop's: position (k + 0.5) * (n_in / n_out) - 0.5, w0 = 1 - frac, w1 = 1 - w0.
    """
    n_in = np.asarray(n_in, np.int64)
    n_out = np.asarray(n_out, np.int64)
    if count is None:
        count = int(np.max(n_out)) - start
    zoom = (n_in / n_out)[..., None]
    cc = (np.arange(start, start + count, dtype=np.float64) + 0.5) * zoom - 0.5
    fl = np.floor(cc)
    w0 = 1.0 - (cc - fl)
    w1 = 1.0 - w0
    lo = fl.astype(np.int64)
    hi = lo + 1
    last = (n_in - 1)[..., None]
    w0 = np.where(lo >= 0, w0, 0.0)
    w1 = np.where(hi <= last, w1, 0.0)
    return np.clip(lo, 0, last), np.clip(hi, 0, last), w0, w1


def _linear_sum(p0, p1, x0, x1, wx0, wx1, axis):
    """t = ((v00 wy0) wx0 + (v01 wy0) wx1) + (v10 wy1) wx0 + (v11 wy1) wx1, summed in scipy's
    order; p0/p1 are the row-weighted rows (v wy0, v wy1), gathered along ``axis``."""
    t = np.take(p0, x0, axis=axis) * wx0
    t += np.take(p0, x1, axis=axis) * wx1
    t += np.take(p1, x0, axis=axis) * wx0
    t += np.take(p1, x1, axis=axis) * wx1
    return t


def resize_linear(image, output_shape, rows=None, cols=None):
    """Matterport's ``utils.resize(image, output_shape, preserve_range=True)`` (skimage order 1,
    mode "constant", cval 0, clip, no anti-aliasing), in NumPy, bit for bit.

    image: [H, W] or [H, W, C]; output_shape: (h, w).  rows, cols: optional (start, count) to
    evaluate only that window of the output (the same values as slicing the full result).
    Returns float64 [h, w(, C)] (float32 for float32/float16 input, like skimage), clipped to the
    input's value range.  (The clip never needs cval's extension: with cval 0 and order 1 an
    output is 0 only if its in-range neighbours are 0.)
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    oh, ow = int(output_shape[0]), int(output_shape[1])
    ry = (0, oh) if rows is None else rows
    rx = (0, ow) if cols is None else cols
    y0, y1, wy0, wy1 = linear_axis(h, oh, ry[0], ry[1])
    x0, x1, wx0, wx1 = linear_axis(w, ow, rx[0], rx[1])
    # only the source columns that the window reads
    clo, chi = int(x0.min(initial=0)), int(x1.max(initial=0)) + 1
    src = image[:, clo:chi]
    ex = (slice(None),) + (None,) * (image.ndim - 1)
    p0 = src[y0].astype(np.float64) * wy0[ex]
    p1 = src[y1].astype(np.float64) * wy1[ex]
    ex = (slice(None),) + (None,) * (image.ndim - 2)
    t = _linear_sum(p0, p1, x0 - clo, x1 - clo, wx0[ex], wx1[ex], axis=1)
    if image.dtype in (np.float32, np.float16):
        t = t.astype(np.float32)
    if image.size:
        np.clip(t, image.min(), image.max(), out=t)
    return t


# ---------------------------------------------------------------------------------------- resizing
def resize(image, output_shape, order=1, preserve_range=True):
    """skimage resize without anti-aliasing, edge-clamped (no dark border, unlike mode
    "constant"), keeping the input dtype (integers rounded and clipped).

    image: [H, W] or [H, W, C]; output_shape: (h, w).  Returns [h, w(, C)] of image.dtype.
    """
    image = np.asarray(image)
    out_shape = tuple(int(v) for v in output_shape[:2]) + image.shape[2:]
    if out_shape == image.shape:
        return image.copy()
    out = skimage.transform.resize(image, out_shape, order=order, mode="edge", clip=True,
                                   preserve_range=preserve_range, anti_aliasing=False)
    if image.dtype == bool:
        return out >= 0.5
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)


def _scaled_size(h, w, scale):
    return int(round(h * scale)), int(round(w * scale))


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square", rng=None,
                 semantics="matterport"):
    """Resize (and pad or crop) an image, keeping the aspect ratio.

    image: [H, W, C] (or [H, W]).  mode:
      * "none": unchanged.
      * "square": scale so the short side is >= min_dim (never shrink below 1 unless the long side
        would exceed max_dim), at least ``min_scale``, then zero-pad to max_dim x max_dim.
      * "pad64": scale like "square" without the max_dim cap, then zero-pad each side to a
        multiple of 64.
      * "crop": scale by max(1, min_dim / short side, min_scale), then take a random
        min_dim x min_dim crop (seeded by ``rng``, a ``np.random.Generator``).
    semantics: "matterport" (skimage order-1 resize with cval 0 borders, truncated to the
    dtype) or "project" (edge-clamped bilinear, rounded); see the module docstring.
    Returns image (same dtype), window (y1, x1, y2, x2) of the image inside the output, scale
    (float), padding [(top, bottom), (left, right), (0, 0)] and crop (y, x, h, w) or None.
    """
    _check_semantics(semantics, "resize_image")
    image = np.asarray(image)
    if mode not in _MODES:
        raise ValueError(f"resize_image: mode must be one of {_MODES}, got {mode!r}")
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"resize_image: expected an [H, W, C] image, got shape {image.shape}")
    h, w = image.shape[:2]
    window = (0, 0, h, w)
    scale = 1.0
    padding = [(0, 0), (0, 0), (0, 0)][: image.ndim]
    crop = None
    if mode == "none":
        return image, window, scale, padding, crop
    if mode == "crop" and not min_dim:
        raise ValueError("resize_image: mode 'crop' needs min_dim (the crop size, IMAGE_MIN_DIM)")
    if mode == "square" and not max_dim:
        raise ValueError("resize_image: mode 'square' needs max_dim (IMAGE_MAX_DIM)")
    if min_dim:
        scale = max(1.0, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = float(min_scale)
    if max_dim and mode == "square":
        if round(max(h, w) * scale) > max_dim:
            scale = max_dim / max(h, w)
    if scale != 1:
        if semantics == "matterport":  # float result cast back: truncation, as Matterport
            image = resize_linear(image, _scaled_size(h, w, scale)).astype(image.dtype)
        else:
            image = resize(image, _scaled_size(h, w, scale))
    h, w = image.shape[:2]
    if mode == "square":
        top = (max_dim - h) // 2
        left = (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)][: image.ndim]
        image = np.pad(image, padding, mode="constant", constant_values=0)
        window = (top, left, top + h, left + w)
    elif mode == "pad64":
        ph = (-h) % 64
        pw = (-w) % 64
        top, left = ph // 2, pw // 2
        padding = [(top, ph - top), (left, pw - left), (0, 0)][: image.ndim]
        image = np.pad(image, padding, mode="constant", constant_values=0)
        window = (top, left, top + h, left + w)
    elif mode == "crop":
        rng = np.random.default_rng() if rng is None else rng
        if h < min_dim or w < min_dim:  # only possible through rounding; pad bottom/right
            padding = [(0, max(0, min_dim - h)), (0, max(0, min_dim - w)), (0, 0)][: image.ndim]
            image = np.pad(image, padding, mode="constant", constant_values=0)
            h, w = image.shape[:2]
        y = int(rng.integers(0, h - min_dim + 1))
        x = int(rng.integers(0, w - min_dim + 1))
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        window = (0, 0, min_dim, min_dim)
    return image, window, scale, padding, crop


def _nearest_index(n_in, n_full, count, offset=0, semantics="project"):
    """Source rows of output pixels offset..offset+count when n_in pixels are resized to n_full.

    "project": pixel-centre aligned nearest neighbour (like skimage's order=0).  "matterport":
    ``scipy.ndimage.zoom(order=0)``'s corner-aligned map, taken from zoom itself on an index
    ramp; -1 marks an output that zoom fills with cval 0 (none in practice)."""
    if semantics == "matterport":
        ramp = np.arange(1, n_in + 1, dtype=np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idx = scipy.ndimage.zoom(ramp, n_full / n_in, order=0)
        if len(idx) != n_full:
            raise AssertionError(f"resize_mask: zoom gave {len(idx)} rows, expected {n_full}")
        return idx[offset:offset + count] - 1
    idx = np.floor((np.arange(offset, offset + count) + 0.5) * (n_in / n_full)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def _gather_rows_cols(mask, rows, cols):
    """mask[rows][:, cols] where -1 entries give zero rows/columns."""
    out = mask[np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]]  # one gather
    if np.any(rows < 0):
        out[rows < 0] = 0
    if np.any(cols < 0):
        out[:, cols < 0] = 0
    return out


def resize_mask(mask, scale, padding, crop=None, semantics="matterport"):
    """Resize a mask stack like :func:`resize_image` did its image (nearest neighbour).

    mask: [H, W, N] (bool or int, or a bit-packed uint8 stack); scale, padding, crop: as
    returned by :func:`resize_image`; semantics: "matterport" (``scipy.ndimage.zoom(order=0)``,
    corner-aligned) or "project" (pixel-centre aligned).  Only index maps are computed, so the
    cost is one gather.  Returns [H', W', N] of mask.dtype whose H', W' match the resized image.
    """
    _check_semantics(semantics, "resize_mask")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"resize_mask: expected an [H, W, N] stack, got shape {mask.shape}")
    h, w = mask.shape[:2]
    nh, nw = _scaled_size(h, w, scale)
    pad = [tuple(p) for p in padding[:2]] + [(0, 0)]
    if crop is not None:
        y, x, ch, cw = crop
        # padding (only used by crop mode through rounding) sits bottom/right of the scaled image
        rows = _nearest_index(h, nh, min(ch, max(0, nh - y)), y, semantics)
        cols = _nearest_index(w, nw, min(cw, max(0, nw - x)), x, semantics)
        out = _gather_rows_cols(mask, rows, cols)
        if out.shape[:2] != (ch, cw):
            out = np.pad(out, [(0, ch - out.shape[0]), (0, cw - out.shape[1]), (0, 0)])
        return out
    if scale != 1:
        mask = _gather_rows_cols(mask, _nearest_index(h, nh, nh, 0, semantics),
                                 _nearest_index(w, nw, nw, 0, semantics))
    if any(p != (0, 0) for p in pad):
        mask = np.pad(mask, pad, mode="constant", constant_values=0)
    return mask


# ---------------------------------------------------------------------------------------- boxes
def extract_bboxes(mask):
    """Bounding boxes of the instances of a mask stack.

    mask: [H, W, N] (nonzero = inside).  Returns [N, 4] int32 (y1, x1, y2, x2) with y2/x2 exclusive;
    all zeros for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"extract_bboxes: expected an [H, W, N] stack, got shape {mask.shape}")
    h, w, n = mask.shape
    if n == 0:
        return np.zeros((0, 4), np.int32)
    return _boxes_from_profiles(mask.any(axis=1), mask.any(axis=0))


def _boxes_from_profiles(rows, cols):
    """Boxes from per-instance row and column occupancy: rows [H, N], cols [W, N] bool."""
    h, w = rows.shape[0], cols.shape[0]
    present = rows.any(axis=0)
    y1 = rows.argmax(axis=0)
    y2 = h - rows[::-1].argmax(axis=0)
    x1 = cols.argmax(axis=0)
    x2 = w - cols[::-1].argmax(axis=0)
    boxes = np.stack([y1, x1, y2, x2], axis=1).astype(np.int32)
    boxes[~present] = 0
    return boxes


# ---------------------------------------------------------------------------------------- bilinear
def _axis_samples(start, size, n_out):
    """Bilinear sample positions along one axis: [K, n_out] low index, high index, weight."""
    pos = (np.arange(n_out)[None, :] + 0.5) * (size[:, None] / n_out) - 0.5
    pos = np.clip(pos, 0, (size - 1)[:, None])
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, (size - 1)[:, None])
    frac = pos - lo
    return start[:, None] + lo, start[:, None] + hi, frac


def _crop_sampler(mask, n, channels=None):
    """get(rows [N, a], cols [N, b]) -> mask values [N, a, b] of instance k (or of bit
    ``channels[k]`` of a packed [H, W, ceil(M/8)] uint8 stack) at absolute pixel indices."""
    W, depth = mask.shape[1], mask.shape[2]
    if channels is None:
        k = np.arange(n)[:, None, None]
        shift = None
    else:
        ch = np.asarray(channels, np.int64)
        k = (ch >> 3)[:, None, None]
        shift = (7 - (ch & 7)).astype(np.uint8)[:, None, None]
    if mask.flags.c_contiguous:
        # flat indices into the raveled stack: row part + column part
        flat = mask.reshape(-1)

        def get(r, c):
            vals = np.take(flat, (r * (W * depth))[:, :, None] + (c * depth)[:, None, :] + k)
            return (vals >> shift) & 1 if shift is not None else vals
    else:
        def get(r, c):
            vals = mask[r[:, :, None], c[:, None, :], k]
            return (vals >> shift) & 1 if shift is not None else vals
    return get


def _linear_crops(mask, boxes, out_shape, channels=None):
    """Matterport's minimize_mask resize of every instance at once: each box's crop resized to
    out_shape by :func:`resize_linear`'s arithmetic, ``np.around``-ed (value > 0.5).

    mask, boxes, channels: as for :func:`_bilinear_crops`.  Returns [N, h, w] bool.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    n = len(boxes)
    mh, mw = int(out_shape[0]), int(out_shape[1])
    bh, bw = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    y0, y1, wy0, wy1 = linear_axis(bh, np.full(n, mh), 0, mh)
    x0, x1, wx0, wx1 = linear_axis(bw, np.full(n, mw), 0, mw)
    y0, y1 = y0 + boxes[:, :1], y1 + boxes[:, :1]
    x0, x1 = x0 + boxes[:, 1:2], x1 + boxes[:, 1:2]
    get = _crop_sampler(mask, n, channels)
    wy0, wy1 = wy0[:, :, None], wy1[:, :, None]
    wx0, wx1 = wx0[:, None, :], wx1[:, None, :]
    v = [get(y0, x0), get(y0, x1), get(y1, x0), get(y1, x1)]
    t = (v[0] * wy0) * wx0
    t += (v[1] * wy0) * wx1
    t += (v[2] * wy1) * wx0
    t += (v[3] * wy1) * wx1
    out = t > 0.5  # np.around of a value in [0, 1]
    # skimage clips to each crop's value range: a crop without a zero pixel becomes all ones
    # even where the cval-0 border pulled it down (only on an upscaled axis).  Along an axis with
    # n_in <= n_out the samples visit every source index, so the samples' minimum is the crop's.
    up = (bh < mh) | (bw < mw)
    covered = (bh <= mh) & (bw <= mw)
    vmin = np.minimum.reduce([a.min(axis=(1, 2)) for a in v]) if n else np.zeros(0)
    full = up & covered & (vmin > 0)
    for i in np.flatnonzero(up & ~covered):  # rare: one axis shrunk, the other grown
        y, x = slice(boxes[i, 0], boxes[i, 2]), slice(boxes[i, 1], boxes[i, 3])
        if channels is None:
            full[i] = bool(np.all(mask[y, x, i]))
        else:
            c = int(channels[i])
            full[i] = bool(np.all((mask[y, x, c >> 3] >> (7 - (c & 7))) & 1))
    out[full] = True
    return out


def _bilinear_crops(mask, boxes, out_shape, channels=None):
    """Bilinear resize of each instance's box content to out_shape, all at once.

    mask: [H, W, N] (or a bit-packed [H, W, ceil(M/8)] uint8 stack with ``channels`` [N], the
    instance index of each box); boxes: [N, 4] int (non-empty); out_shape: (h, w).
    Returns [N, h, w] float32 (pixel-centre aligned, edge-clamped inside each box).
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    mh, mw = int(out_shape[0]), int(out_shape[1])
    y0, y1i, fy = _axis_samples(boxes[:, 0], boxes[:, 2] - boxes[:, 0], mh)
    x0, x1i, fx = _axis_samples(boxes[:, 1], boxes[:, 3] - boxes[:, 1], mw)
    get = _crop_sampler(mask, len(boxes), channels)
    # gather first, convert after (never convert the whole stack)
    a = get(y0, x0).astype(np.float32)
    b = get(y0, x1i).astype(np.float32)
    c = get(y1i, x0).astype(np.float32)
    d = get(y1i, x1i).astype(np.float32)
    fy = fy[:, :, None].astype(np.float32)
    fx = fx[:, None, :].astype(np.float32)
    top = a + (b - a) * fx
    bottom = c + (d - c) * fx
    return top + (bottom - top) * fy


def _check_bbox(bbox, n, name):
    bbox = np.asarray(bbox)
    if bbox.shape != (n, 4):
        raise ValueError(f"{name}: bbox must be [N, 4] with N = number of masks ({n}), "
                         f"got shape {bbox.shape}")
    return bbox.astype(np.int64)


def minimize_mask(bbox, mask, mini_shape, semantics="matterport"):
    """Crop each mask to its box and resize it to ``mini_shape`` (saves memory in training).

    bbox: [N, 4] from :func:`extract_bboxes`; mask: [H, W, N]; mini_shape: (h, w); semantics:
    "matterport" (order-1 resize with cval-0 borders, value > 0.5) or "project" (edge-clamped
    bilinear, >= 0.5).  Returns [h, w, N] bool.  Raises for empty boxes.
    """
    _check_semantics(semantics, "minimize_mask")
    mask = np.asarray(mask)
    n = mask.shape[-1]
    bbox = _check_bbox(bbox, n, "minimize_mask")
    mh, mw = int(mini_shape[0]), int(mini_shape[1])
    if n == 0:
        return np.zeros((mh, mw, 0), bool)
    empty = (bbox[:, 2] <= bbox[:, 0]) | (bbox[:, 3] <= bbox[:, 1])
    if np.any(empty):
        raise ValueError(f"minimize_mask: instances {np.flatnonzero(empty).tolist()} have empty "
                         "boxes; drop empty masks before minimizing")
    mask = mask.astype(bool, copy=False)
    if semantics == "matterport":
        hard = _linear_crops(mask, bbox, (mh, mw))
    else:
        hard = _bilinear_crops(mask, bbox, (mh, mw)) >= 0.5
    return np.ascontiguousarray(hard.transpose(1, 2, 0))


def _paste(soft_fn, bbox, image_shape, n, dtype=bool):
    """Shared vectorised paste: soft_fn(k, rr, cc) gives values of instance k at box pixels."""
    H, W = int(image_shape[0]), int(image_shape[1])
    out = np.zeros((H, W, n), dtype)
    y1 = np.clip(bbox[:, 0], 0, H)
    x1 = np.clip(bbox[:, 1], 0, W)
    y2 = np.clip(bbox[:, 2], 0, H)
    x2 = np.clip(bbox[:, 3], 0, W)
    hh = np.maximum(y2 - y1, 0)
    ww = np.maximum(x2 - x1, 0)
    counts = hh * ww
    total = int(counts.sum())
    if total == 0:
        return out
    inst = np.repeat(np.arange(n), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local = np.arange(total) - np.repeat(offsets, counts)
    wrep = ww[inst]
    rr = y1[inst] + local // wrep
    cc = x1[inst] + local % wrep
    out[rr, cc, inst] = soft_fn(inst, rr, cc)
    return out


def _bilinear_at(minis, bbox, inst, rr, cc):
    """Sample mini masks [N, h, w] (float) at full-image pixels (rr, cc) of instance inst."""
    mh, mw = minis.shape[1:]
    bh = (bbox[inst, 2] - bbox[inst, 0]).astype(np.float64)
    bw = (bbox[inst, 3] - bbox[inst, 1]).astype(np.float64)
    py = np.clip((rr - bbox[inst, 0] + 0.5) * (mh / bh) - 0.5, 0, mh - 1)
    px = np.clip((cc - bbox[inst, 1] + 0.5) * (mw / bw) - 0.5, 0, mw - 1)
    y0 = np.floor(py).astype(np.int64)
    x0 = np.floor(px).astype(np.int64)
    y1 = np.minimum(y0 + 1, mh - 1)
    x1 = np.minimum(x0 + 1, mw - 1)
    fy = py - y0
    fx = px - x0
    top = minis[inst, y0, x0] * (1 - fx) + minis[inst, y0, x1] * fx
    bottom = minis[inst, y1, x0] * (1 - fx) + minis[inst, y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _linear_at(minis, bbox, inst, rr, cc):
    """Matterport's per-box resize of minis [N, h, w] (skimage order 1, cval-0 borders), evaluated
    at full-image pixels (rr, cc) of instance inst, before clipping.  Returns float64."""
    mh, mw = minis.shape[1:]
    zy = (mh / (bbox[:, 2] - bbox[:, 0]))[inst]
    zx = (mw / (bbox[:, 3] - bbox[:, 1]))[inst]

    def table(local, zoom, n_in):
        pos = (local.astype(np.float64) + 0.5) * zoom - 0.5
        fl = np.floor(pos)
        w0 = 1.0 - (pos - fl)
        w1 = 1.0 - w0
        lo = fl.astype(np.int64)
        w0 = np.where(lo >= 0, w0, 0.0)
        w1 = np.where(lo + 1 <= n_in - 1, w1, 0.0)
        return np.clip(lo, 0, n_in - 1), np.clip(lo + 1, 0, n_in - 1), w0, w1

    y0, y1, wy0, wy1 = table(rr - bbox[inst, 0], zy, mh)
    x0, x1, wx0, wx1 = table(cc - bbox[inst, 1], zx, mw)
    t = (minis[inst, y0, x0] * wy0) * wx0
    t += (minis[inst, y0, x1] * wy0) * wx1
    t += (minis[inst, y1, x0] * wy1) * wx0
    t += (minis[inst, y1, x1] * wy1) * wx1
    return t


def expand_mask(bbox, mini_mask, image_shape, semantics="matterport"):
    """Inverse of :func:`minimize_mask`: resize each mini mask into its box of a full image.

    bbox: [N, 4]; mini_mask: [h, w, N]; image_shape: (H, W[, C]); semantics: as for
    :func:`minimize_mask`.  Returns [H, W, N] bool.
    """
    _check_semantics(semantics, "expand_mask")
    mini_mask = np.asarray(mini_mask)
    n = mini_mask.shape[-1]
    bbox = _check_bbox(bbox, n, "expand_mask")
    if semantics == "matterport":
        minis = np.moveaxis(mini_mask, -1, 0).astype(np.float64)
        lo = minis.min(axis=(1, 2), initial=np.inf)
        hi = minis.max(axis=(1, 2), initial=-np.inf)
        return _paste(lambda inst, rr, cc: np.clip(_linear_at(minis, bbox, inst, rr, cc),
                                                   lo[inst], hi[inst]) > 0.5,
                      bbox, image_shape, n)
    minis = np.moveaxis(mini_mask, -1, 0).astype(np.float32)
    return _paste(lambda inst, rr, cc: _bilinear_at(minis, bbox, inst, rr, cc) >= 0.5,
                  bbox, image_shape, n)


def paste_masks(masks, boxes, image_shape, threshold=0.5, semantics="matterport", soft=False):
    """Unmold many mask-head outputs at once (:func:`unmold_mask` of each, vectorised).

    masks: [N, h, w] float in [0, 1]; boxes: [N, 4] pixel boxes (parts outside the image are
    cut off); image_shape: (H, W[, C]).  "matterport": each mask resized to its box as float32 by
    skimage's order-1 resize (cval-0 borders, clipped to the mask's range), then
    ``>= threshold``; "project": edge-clamped bilinear, ``>= threshold``.
    Returns hard [H, W, N] bool and, with ``soft`` and "matterport", the resized float32 values
    [H, W, N] (0 outside the boxes; ``soft >= threshold`` equals hard), else None.
    """
    _check_semantics(semantics, "paste_masks")
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3:
        raise ValueError(f"paste_masks: expected [N, h, w] masks, got shape {masks.shape}")
    n = len(masks)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(n, 4)
    if semantics == "project":
        hard = _paste(lambda inst, rr, cc: _bilinear_at(masks, boxes, inst, rr, cc) >= threshold,
                      boxes, image_shape, n)
        return hard, None
    lo = masks.min(axis=(1, 2), initial=np.inf)
    hi = masks.max(axis=(1, 2), initial=-np.inf)
    minis = masks.astype(np.float64)

    def values(inst, rr, cc):
        t = _linear_at(minis, boxes, inst, rr, cc).astype(np.float32)
        return np.clip(t, lo[inst], hi[inst])

    if soft:
        softs = _paste(values, boxes, image_shape, n, dtype=np.float32)
        return softs >= threshold, softs
    return _paste(lambda inst, rr, cc: values(inst, rr, cc) >= threshold,
                  boxes, image_shape, n), None


def unmold_mask(mask, bbox, image_shape, threshold=0.5, semantics="matterport"):
    """Turn a mask-head output into a full-size mask.

    mask: [h, w] float in [0, 1] (e.g. 28x28); bbox: (y1, x1, y2, x2) pixel box in the image;
    image_shape: (H, W[, C]); semantics: see :func:`paste_masks`.
    Returns [H, W] bool (the resized mask >= threshold, inside bbox).
    """
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim != 2:
        raise ValueError(f"unmold_mask: expected a [h, w] mask, got shape {mask.shape}")
    hard, _ = paste_masks(mask[None], np.asarray(bbox).reshape(1, 4), image_shape, threshold,
                          semantics)
    return hard[:, :, 0]


# ---------------------------------------------------------------------------------------- packed
def packed_nonempty(packed, n):
    """Which instances of a bit-packed stack (``np.packbits(masks, axis=-1)``) have pixels.

    packed: [H, W, ceil(N/8)] uint8; n: N.  Returns [N] bool.  One pass over the packed bytes.
    """
    if n == 0:
        return np.zeros(0, bool)
    flat = np.bitwise_or.reduce(np.bitwise_or.reduce(packed, axis=0), axis=0)
    return np.unpackbits(flat, count=n).astype(bool)


def _or_rows(packed):
    """OR over axis 1 of [H, W, P] by halving (NumPy's strided reduce over axis 1 is slow)."""
    r = packed
    while r.shape[1] > 1:
        half = r.shape[1] // 2
        head = r[:, :half] | r[:, half:2 * half]
        if r.shape[1] % 2:
            head[:, 0] |= r[:, -1]
        r = head
    return r[:, 0]


def packed_bboxes(packed, channels):
    """extract_bboxes() of instances ``channels`` [K] of a bit-packed stack -> [K, 4] int32."""
    channels = np.asarray(channels, np.int64)
    if len(channels) == 0:
        return np.zeros((0, 4), np.int32)
    rows = np.unpackbits(_or_rows(packed), axis=-1)[:, channels]
    cols = np.unpackbits(np.bitwise_or.reduce(packed, axis=0), axis=-1)[:, channels]
    return _boxes_from_profiles(rows.astype(bool), cols.astype(bool))


def packed_minimize_mask(bbox, packed, channels, mini_shape, semantics="matterport"):
    """minimize_mask() of instances ``channels`` [K] of a bit-packed stack -> [h, w, K] bool."""
    _check_semantics(semantics, "packed_minimize_mask")
    channels = np.asarray(channels, np.int64)
    bbox = _check_bbox(bbox, len(channels), "packed_minimize_mask")
    mh, mw = int(mini_shape[0]), int(mini_shape[1])
    if len(channels) == 0:
        return np.zeros((mh, mw, 0), bool)
    if np.any((bbox[:, 2] <= bbox[:, 0]) | (bbox[:, 3] <= bbox[:, 1])):
        raise ValueError("packed_minimize_mask: empty boxes; drop empty instances first")
    if semantics == "matterport":
        hard = _linear_crops(packed, bbox, (mh, mw), channels=channels)
    else:
        hard = _bilinear_crops(packed, bbox, (mh, mw), channels=channels) >= 0.5
    return np.ascontiguousarray(hard.transpose(1, 2, 0))


def packed_unpack(packed, channels, n):
    """Full [H, W, K] bool masks of instances ``channels`` [K] of a packed stack of n."""
    full = np.unpackbits(packed, axis=-1, count=n).view(bool)
    channels = np.asarray(channels, np.int64)
    return full if len(channels) == n else full[..., channels]


# ---------------------------------------------------------------------------------------- meta
#: The image_meta layout (one float32 vector per image, :func:`compose_image_meta`): the index or
#: slice of each field.  The graph reads META_WINDOW (layers.detection.meta_window) and
#: META_ACTIVE_CLASS_IDS (training.mask_rcnn_losses); IMAGE_META_SIZE = META_FIXED_SIZE + NUM_CLASSES.
META_IMAGE_ID = 0
META_ORIGINAL_IMAGE_SHAPE = slice(1, 4)
META_IMAGE_SHAPE = slice(4, 7)
META_WINDOW = slice(7, 11)
META_SCALE = 11
META_ACTIVE_CLASS_IDS = slice(12, None)
META_FIXED_SIZE = 12
#: field name -> (index or slice, NumPy dtype parse_image_meta returns)
META_FIELDS = {
    "image_id": (META_IMAGE_ID, np.int32),
    "original_image_shape": (META_ORIGINAL_IMAGE_SHAPE, np.int32),
    "image_shape": (META_IMAGE_SHAPE, np.int32),
    "window": (META_WINDOW, np.int32),
    "scale": (META_SCALE, np.float32),
    "active_class_ids": (META_ACTIVE_CLASS_IDS, np.int32),
}


def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """Pack image attributes into one float32 vector.

    Layout (:data:`META_FIELDS`): image_id (1), original_image_shape (3), image_shape (3), window
    (4, y1 x1 y2 x2 in the molded image), scale (1), active_class_ids (NUM_CLASSES).  Returns
    [META_FIXED_SIZE + NUM_CLASSES] = [1+3+3+4+1+NUM_CLASSES].
    """
    orig = list(original_image_shape)
    shape = list(image_shape)
    if len(orig) != 3 or len(shape) != 3:
        raise ValueError("compose_image_meta: original_image_shape and image_shape must be "
                         f"(H, W, C); got {tuple(orig)} and {tuple(shape)}")
    active = list(active_class_ids)
    meta = np.zeros(META_FIXED_SIZE + len(active), np.float32)
    meta[META_IMAGE_ID] = image_id
    meta[META_ORIGINAL_IMAGE_SHAPE] = orig
    meta[META_IMAGE_SHAPE] = shape
    meta[META_WINDOW] = list(window)
    meta[META_SCALE] = scale
    meta[META_ACTIVE_CLASS_IDS] = active
    return meta


def parse_image_meta(meta):
    """Unpack :func:`compose_image_meta` vectors.

    meta: [M] or [B, M].  Returns a dict of NumPy arrays with the leading batch shape: image_id
    int32, original_image_shape [3] int32, image_shape [3] int32, window [4] int32, scale float32,
    active_class_ids [NUM_CLASSES] int32.
    """
    meta = np.asarray(meta)
    if meta.shape[-1] <= META_FIXED_SIZE:
        raise ValueError(f"parse_image_meta: meta vectors need {META_FIXED_SIZE} + NUM_CLASSES "
                         f"values, got {meta.shape[-1]}")
    return {name: meta[..., where].astype(dtype) for name, (where, dtype) in META_FIELDS.items()}


def mold_image(images, config):
    """images [..., C] uint8 -> float32 minus config.MEAN_PIXEL (C values)."""
    images = np.asarray(images)
    mean = np.asarray(config.MEAN_PIXEL, np.float32)
    if images.shape[-1] != mean.shape[-1]:
        raise ValueError(f"mold_image: images have {images.shape[-1]} channels but "
                         f"config.MEAN_PIXEL has {mean.shape[-1]} values (IMAGE_CHANNEL_COUNT)")
    # Matterport subtracts the float64 MEAN_PIXEL (float64 result, cast to float32 when fed to
    # the graph); computing it the same way gives the graph's input bit for bit
    return (images.astype(np.float32) - np.asarray(config.MEAN_PIXEL, np.float64)).astype(
        np.float32)


def unmold_image(normalized_images, config):
    """Inverse of :func:`mold_image`: add MEAN_PIXEL, round and clip to uint8."""
    out = np.asarray(normalized_images, np.float32) + np.asarray(config.MEAN_PIXEL, np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def norm_boxes(boxes, shape):
    """Pixel boxes [..., 4] -> normalised float32: (y1, x1, y2 - 1, x2 - 1) / (h-1, w-1, h-1, w-1).

    shape: (h, w) of the image the boxes are in.
    """
    h, w = shape[:2]
    # Matterport's arithmetic: float64 (integer boxes) divided, then cast to float32
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide(np.asarray(boxes) - shift, scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    """Inverse of :func:`norm_boxes`: normalised [..., 4] -> int32 pixel boxes (rounded half to
    even; float32 input is multiplied in float64, as Matterport's integer scale promotes it)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(np.asarray(boxes), scale) + shift).astype(np.int32)
