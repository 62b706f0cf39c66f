"""Per-nucleus outline and measurements from one instance's mask crop.

:func:`measure_instance` is the one place a nucleus becomes a record: its outline (a valid shapely
polygon in full-resolution slide pixels, pixel-corner coordinates: working pixel (y, x) covers
[x*d, (x+1)*d) x [y*d, (y+1)*d) at downsample d) and its measurements.  Areas, perimeters and
centroids are given in full-resolution pixels ("_px") and, when the slide's microns per pixel is
known, in microns ("_um"); NaN otherwise.  Intensities are means over the nucleus's pixels of the
RGB tile and of the hematoxylin channel (:func:`mrcnn_nuclei.stain.hematoxylin_channel`, 0..255).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["measure_instance", "mask_polygon", "TABLE_COLUMNS", "MEASUREMENT_NAMES"]

#: Columns of the per-nucleus table, in order.
TABLE_COLUMNS = ("id", "tile", "class", "class_id", "score", "centroid_x_px", "centroid_y_px",
                 "centroid_x_um", "centroid_y_um", "area_px", "area_um2", "perimeter_px",
                 "perimeter_um", "eccentricity", "solidity", "mean_r", "mean_g", "mean_b",
                 "mean_hematoxylin")

#: Measurements written into each GeoJSON feature (a subset of the table's columns).
MEASUREMENT_NAMES = ("score", "area_px", "area_um2", "perimeter_px", "perimeter_um",
                     "eccentricity", "solidity", "mean_r", "mean_g", "mean_b", "mean_hematoxylin")


def mask_polygon(mask, y0, x0, downsample=1.0, tolerance=0.5):
    """Outline of the largest connected part of ``mask`` [h, w] bool whose top-left pixel is
    working pixel (y0, x0) -> shapely Polygon (valid, counter-clockwise exterior, no holes) in
    full-resolution pixel-corner coordinates.  ``tolerance``: Douglas-Peucker simplification in
    working pixels (0 keeps every contour vertex)."""
    import shapely
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(np.asarray(mask, bool), 1)
    best = None
    for contour in find_contours(padded.astype(np.uint8), 0.5):
        if tolerance:
            contour = approximate_polygon(contour, tolerance)
        if len(contour) < 4:
            continue
        # padded index coords of pixel centres -> pixel-corner coords: (i - 1) + 0.5
        ys = (contour[:, 0] - 0.5 + y0) * downsample
        xs = (contour[:, 1] - 0.5 + x0) * downsample
        poly = Polygon(np.stack([np.round(xs, 3), np.round(ys, 3)], 1))
        if not poly.is_valid:
            fixed = shapely.make_valid(poly)
            parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
            if not parts:
                continue
            poly = max(parts, key=lambda g: g.area)
        if best is None or poly.area > best.area:
            best = poly
    if best is None or best.is_empty:
        # a degenerate outline: fall back to the bounding square of the pixels
        yy, xx = np.nonzero(mask)
        best = shapely.box((xx.min() + x0) * downsample, (yy.min() + y0) * downsample,
                           (xx.max() + 1 + x0) * downsample, (yy.max() + 1 + y0) * downsample)
    return orient(Polygon(best.exterior.coords), 1.0)


def measure_instance(mask, y0, x0, rgb=None, hema=None, downsample=1.0, base_mpp=None,
                     tolerance=0.5):
    """One nucleus -> dict with ``polygon`` (list of [x, y] full-resolution pixels, closed ring)
    and the numeric columns of :data:`TABLE_COLUMNS` that depend on the mask and pixels.

    mask [h, w] bool crop at working pixel (y0, x0); rgb [h, w, 3] uint8 and hema [h, w] uint8:
    the same crop of the slide and its hematoxylin channel (None: intensities are NaN).
    """
    from skimage.measure import regionprops

    mask = np.asarray(mask, bool)
    d = float(downsample)
    um = float(base_mpp) if base_mpp else math.nan
    props = regionprops(mask.astype(np.uint8))[0]
    cy, cx = props.centroid
    rec = {
        "centroid_x_px": (x0 + cx + 0.5) * d,
        "centroid_y_px": (y0 + cy + 0.5) * d,
        "area_px": float(props.area) * d * d,
        "perimeter_px": float(props.perimeter) * d,
        "eccentricity": float(props.eccentricity),
        "solidity": float(props.solidity),
    }
    rec["centroid_x_um"] = rec["centroid_x_px"] * um
    rec["centroid_y_um"] = rec["centroid_y_px"] * um
    rec["area_um2"] = rec["area_px"] * um * um
    rec["perimeter_um"] = rec["perimeter_px"] * um
    if rgb is not None:
        px = np.asarray(rgb)[mask].astype(np.float64)
        rec["mean_r"], rec["mean_g"], rec["mean_b"] = (float(v) for v in px[:, :3].mean(0))
    else:
        rec["mean_r"] = rec["mean_g"] = rec["mean_b"] = math.nan
    rec["mean_hematoxylin"] = (float(np.asarray(hema)[mask].mean()) if hema is not None
                               else math.nan)
    poly = mask_polygon(mask, y0, x0, d, tolerance)
    rec["polygon"] = [[float(x), float(y)] for x, y in poly.exterior.coords]
    return rec
