"""Low-resolution tissue mask, to skip tiles that hold only glass/background.

Stained tissue is coloured (H&E: purple/pink), glass is white or light grey, so a pixel is tissue
when its saturation is above a threshold: Otsu's on the thumbnail's saturation, clipped to
[``MIN_SATURATION``, ``MAX_SATURATION``] (the clip keeps a slide that is all tissue, where Otsu
would split the tissue itself in two, and one that is all glass).  The saturation is smoothed over
3x3 thumbnail pixels first (scanner/JPEG noise on glass averages out); the mask is cleaned with a
small opening and dilated by ``margin`` thumbnail pixels so that nuclei at the tissue edge are
not lost.  Grey/black marks (unsaturated) count as background.

    mask, scale = tissue_mask(reader)            # [h, w] bool, (sy, sx) working px per mask px
    todo = tiles_with_tissue(tiles, mask, scale)
"""

from __future__ import annotations

import numpy as np

__all__ = ["tissue_mask", "tiles_with_tissue", "saturation_tissue", "MIN_SATURATION",
           "MAX_SATURATION"]

MIN_SATURATION = 0.04
MAX_SATURATION = 0.10


def saturation_tissue(rgb, margin=2):
    """rgb [h, w, 3] uint8 -> tissue mask [h, w] bool (see the module docstring)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    rgb = np.asarray(rgb, np.float32) / 255.0
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    sat = ndimage.uniform_filter(sat, 3)   # glass noise averages out, tissue stays coloured
    t = threshold_otsu(sat) if np.ptp(sat) > 0 else MAX_SATURATION
    t = float(np.clip(t, MIN_SATURATION, MAX_SATURATION))
    mask = sat > t
    mask = ndimage.binary_opening(mask, iterations=1)
    if margin:
        mask = ndimage.binary_dilation(mask, iterations=int(margin))
    return mask


def tissue_mask(reader, max_size=2048, margin=2):
    """Tissue mask of a :class:`~mrcnn_nuclei.slides.reader.SlideReader`'s thumbnail.

    Returns (mask [h, w] bool, (sy, sx)): working-grid pixels per mask pixel on each axis.
    """
    thumb, scale = reader.thumbnail(max_size)
    return saturation_tissue(thumb, margin=margin), scale


def tiles_with_tissue(tiles, mask, scale):
    """The tiles (dicts with ``box`` = (y0, y1, x0, x1) on the working grid) whose box holds at
    least one tissue pixel of ``mask`` (scale: working px per mask px, from :func:`tissue_mask`)."""
    sy, sx = scale
    h, w = mask.shape
    out = []
    for tile in tiles:
        y0, y1, x0, x1 = tile["box"]
        my0, my1 = int(np.floor(y0 / sy)), min(h, int(np.ceil(y1 / sy)))
        mx0, mx1 = int(np.floor(x0 / sx)), min(w, int(np.ceil(x1 / sx)))
        if mask[my0:max(my1, my0 + 1), mx0:max(mx1, mx0 + 1)].any():
            out.append(tile)
    return out
