"""Hematoxylin channel by Ruifrok-Johnston colour deconvolution (scikit-image's HED).

The H concentration that :func:`skimage.color.rgb2hed` returns is rescaled to uint8 over a FIXED
range, so the same colour gets the same value in every image (a per-image min-max stretch would
turn a pale tile into a dark one):

* ``H_RANGE[0] = 0.0``: white background / no hematoxylin (``rgb2hed`` gives 0 for pure white);
* ``H_RANGE[1] = 0.25``: dense hematoxylin.  ``hed2rgb`` of H = 0.25 (no eosin, no DAB) is about
  RGB (27, 23, 94), darker than nearly every nucleus pixel in 40x H&E: on the MoNuSeg training
  tiles the 99.9th percentile of H is about 0.23.  Larger values saturate at 255.

Value v in 0..255 therefore means H = v / 255 * 0.25 (linear).
"""

from __future__ import annotations

import numpy as np

__all__ = ["H_RANGE", "hematoxylin_channel", "hematoxylin_concentration"]

H_RANGE = (0.0, 0.25)


def _check_rgb(rgb, name="rgb"):
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"{name}: expected an RGB image [H, W, 3] (extra channels are ignored), "
                         f"got shape {rgb.shape}; convert grey images with "
                         "mrcnn_nuclei.data.convert.to_uint8(image, 3)")
    if rgb.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 values 0..255, got dtype {rgb.dtype}; "
                         "convert with mrcnn_nuclei.data.convert.to_uint8(image, 3)")
    return rgb[..., :3]


def hematoxylin_concentration(rgb):
    """H concentration of an RGB image: rgb [H, W, 3] uint8 -> [H, W] float32 (>= 0)."""
    from skimage.color import rgb2hed

    rgb = _check_rgb(rgb)
    h = rgb2hed(rgb)[..., 0]
    return np.maximum(h, 0.0).astype(np.float32)


def hematoxylin_channel(rgb, h_range=H_RANGE):
    """Hematoxylin channel as an image: rgb [H, W, 3(+)] uint8 -> [H, W] uint8.

    0 = no hematoxylin, 255 = H >= ``h_range[1]`` (0.25 by default); linear in between.
    """
    lo, hi = float(h_range[0]), float(h_range[1])
    if not hi > lo:
        raise ValueError(f"h_range={h_range!r}: needs low < high, e.g. {H_RANGE}")
    h = hematoxylin_concentration(rgb)
    scaled = (h - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
