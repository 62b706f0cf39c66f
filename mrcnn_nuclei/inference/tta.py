"""Test-time augmentation: detect on transformed copies, map back, merge.

Transforms (names for ``tta_detect(transforms=...)``):

* ``"orig"``: the image as is;
* ``"hflip"`` / ``"vflip"``: mirror left-right / top-bottom (masks and boxes are mirrored back);
* ``"hvflip"``: both (a 180-degree rotation);
* ``"hue"``: hue shifted by ``hue_shift`` (fraction of the colour circle) and saturation scaled by
  ``saturation_scale`` on the first three (RGB) channels; brightness (HSV value) and any extra
  channels are unchanged, and so is the geometry.

Every run is a ``detect_soft`` result mapped back to the original frame; the runs are merged with
:func:`mrcnn_nuclei.inference.merge.merge_instances` (by default ``min_runs=2``: an instance must
be found under at least two transforms).
"""

from __future__ import annotations

import numpy as np

from .merge import merge_instances

__all__ = ["TRANSFORMS", "apply_transform", "invert_run", "tta_detect"]

TRANSFORMS = ("orig", "hflip", "vflip", "hue")
_KNOWN = ("orig", "hflip", "vflip", "hvflip", "hue")


def _jitter_colour(image, hue_shift, saturation_scale):
    from skimage.color import hsv2rgb, rgb2hsv

    if image.ndim != 3 or image.shape[-1] < 3:
        return image  # grey: no colour to jitter
    rgb = image[..., :3]
    hsv = rgb2hsv(rgb)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue_shift, 1.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation_scale, 0.0, 1.0)
    out = image.copy()
    back = hsv2rgb(hsv)
    if image.dtype == np.uint8:
        back = np.clip(np.rint(back * 255.0), 0, 255)
    out[..., :3] = back.astype(image.dtype)
    return out


def apply_transform(name, image, hue_shift=0.05, saturation_scale=1.15):
    """Transform one image [H, W(, C)] -> transformed image (same shape and dtype)."""
    image = np.asarray(image)
    if name == "orig":
        return image
    if name == "hflip":
        return np.ascontiguousarray(image[:, ::-1])
    if name == "vflip":
        return np.ascontiguousarray(image[::-1])
    if name == "hvflip":
        return np.ascontiguousarray(image[::-1, ::-1])
    if name == "hue":
        return _jitter_colour(image, hue_shift, saturation_scale)
    raise ValueError(f"unknown TTA transform {name!r}; known: {', '.join(_KNOWN)}")


def invert_run(name, result):
    """Map one detection dict from the transformed frame back to the original frame.

    Flips ``masks``/``soft_masks`` [H, W, N] back and mirrors ``rois`` [N, 4] (exclusive corners:
    x1' = W - x2, x2' = W - x1).  Returns a new dict.
    """
    flip_y = name in ("vflip", "hvflip")
    flip_x = name in ("hflip", "hvflip")
    out = dict(result)
    for key in ("masks", "soft_masks"):
        if key in out and out[key] is not None:
            arr = np.asarray(out[key])
            if flip_y:
                arr = arr[::-1]
            if flip_x:
                arr = arr[:, ::-1]
            out[key] = np.ascontiguousarray(arr)
    if "rois" in out and out["rois"] is not None and (flip_x or flip_y):
        boxes = np.asarray(out["rois"]).copy()
        frames = [out[k] for k in ("masks", "soft_masks") if out.get(k) is not None]
        if not frames:
            raise ValueError(f"invert_run({name!r}): mirroring 'rois' needs 'masks' or "
                             "'soft_masks' [H, W, N] for the image size")
        h, w = np.asarray(frames[0]).shape[:2]
        if flip_y:
            boxes[:, [0, 2]] = h - boxes[:, [2, 0]]
        if flip_x:
            boxes[:, [1, 3]] = w - boxes[:, [3, 1]]
        out["rois"] = boxes.astype(np.int32)
    return out


def _detect_runs(model, images):
    if hasattr(model, "detect_soft"):
        return model.detect_soft(images)
    return model.detect(images)


def tta_detect(model, image, transforms=TRANSFORMS, merge_kwargs=None, hue_shift=0.05,
               saturation_scale=1.15, return_runs=False):
    """Detect with test-time augmentation on one image [H, W(, C)].

    Runs ``model.detect_soft`` (or ``detect``) once on all transformed copies, maps every run back
    and merges them (``merge_kwargs`` go to ``merge_instances``; default ``min_runs`` = 2, or 1
    with a single transform).  Returns a detect()-style dict: ``rois`` [N, 4] int32,
    ``class_ids`` [N], ``scores`` [N], ``masks`` [H, W, N] bool, ``soft_masks`` [H, W, N] float32,
    ``n_runs`` [N]; with ``return_runs`` also the list of mapped-back runs.
    """
    transforms = tuple(transforms)
    if not transforms:
        raise ValueError("tta_detect: transforms is empty; e.g. ('orig', 'hflip', 'vflip', 'hue')")
    for name in transforms:
        if name not in _KNOWN:
            raise ValueError(f"unknown TTA transform {name!r}; known: {', '.join(_KNOWN)}")
    image = np.asarray(image)
    copies = [apply_transform(t, image, hue_shift, saturation_scale) for t in transforms]
    raw = _detect_runs(model, copies)
    runs = [invert_run(t, r) for t, r in zip(transforms, raw)]
    kwargs = {"min_runs": min(2, len(runs))}
    kwargs.update(merge_kwargs or {})
    merged = merge_instances(runs, **kwargs)
    if return_runs:
        return merged, runs
    return merged

