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


def _outline(mask):
    """Largest outline of ``mask`` [h, w] bool as a shapely Polygon in working-pixel-corner
    coordinates relative to the crop (marching squares at 0.5 on the zero-padded mask), or None."""
    import shapely
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, bool), 1).astype(np.uint8)
    best = None
    for contour in find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        # padded index coords of pixel centres -> pixel-corner coords: (i - 1) + 0.5
        poly = Polygon(np.stack([contour[:, 1] - 0.5, contour[:, 0] - 0.5], 1))
        if not poly.is_valid:
            fixed = shapely.make_valid(poly)
            parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
            if not parts:
                continue
            poly = max(parts, key=lambda g: g.area)
        if best is None or poly.area > best.area:
            best = poly
    return best


def mask_polygon(mask, y0, x0, downsample=1.0, tolerance=0.5, outline=None):
    """Outline of the largest connected part of ``mask`` [h, w] bool whose top-left pixel is
    working pixel (y0, x0) -> shapely Polygon (valid, counter-clockwise exterior, no holes) in
    full-resolution pixel-corner coordinates, rounded to 1/1000 px.  ``tolerance``:
    Douglas-Peucker simplification in working pixels (0 keeps every contour vertex); a
    simplification that would not be valid is skipped.  outline: :func:`_outline` if known."""
    import shapely
    from shapely import affinity
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient

    poly = _outline(mask) if outline is None else outline
    if poly is None or poly.is_empty:
        # a degenerate outline: fall back to the bounding box of the pixels
        yy, xx = np.nonzero(mask)
        poly = shapely.box(xx.min(), yy.min(), xx.max() + 1, yy.max() + 1)
    if tolerance:
        simple = poly.simplify(float(tolerance), preserve_topology=True)
        if simple.geom_type == "Polygon" and simple.is_valid and not simple.is_empty:
            poly = simple
    poly = affinity.affine_transform(poly, [downsample, 0, 0, downsample,
                                            x0 * downsample, y0 * downsample])
    rounded = Polygon(np.round(np.asarray(poly.exterior.coords), 3))
    if rounded.is_valid and not rounded.is_empty:
        poly = rounded
    return orient(Polygon(poly.exterior.coords), 1.0)


def measure_instance(mask, y0, x0, rgb=None, hema=None, downsample=1.0, base_mpp=None,
                     tolerance=0.5):
    """One nucleus -> dict with ``polygon`` (list of [x, y] full-resolution pixels, closed ring)
    and the numeric columns of :data:`TABLE_COLUMNS` that depend on the mask and pixels.

    mask [h, w] bool crop at working pixel (y0, x0); rgb [h, w, 3] uint8 and hema [h, w] uint8:
    the same crop of the slide and its hematoxylin channel (None: intensities are NaN).
    Centroid and area from the pixels; eccentricity from the pixels' second moments (as an
    ellipse with the same moments); perimeter = length of the outline (before simplification);
    solidity = outline area / its convex hull's area.
    """
    mask = np.asarray(mask, bool)
    d = float(downsample)
    um = float(base_mpp) if base_mpp else math.nan
    ys, xs = np.nonzero(mask)
    area = len(ys)
    cy, cx = ys.mean(), xs.mean()
    a, c = ((ys - cy) ** 2).mean(), ((xs - cx) ** 2).mean()
    b = ((ys - cy) * (xs - cx)).mean()
    root = math.sqrt(((a - c) / 2) ** 2 + b * b)
    l1, l2 = (a + c) / 2 + root, (a + c) / 2 - root
    outline = _outline(mask)
    rec = {
        "centroid_x_px": (x0 + cx + 0.5) * d,
        "centroid_y_px": (y0 + cy + 0.5) * d,
        "area_px": float(area) * d * d,
        "perimeter_px": float(outline.length) * d if outline is not None else math.nan,
        "eccentricity": math.sqrt(max(0.0, 1 - l2 / l1)) if l1 > 0 else 0.0,
        "solidity": (float(outline.area / outline.convex_hull.area)
                     if outline is not None and outline.convex_hull.area > 0 else 1.0),
    }
    rec["centroid_x_um"] = rec["centroid_x_px"] * um
    rec["centroid_y_um"] = rec["centroid_y_px"] * um
    rec["area_um2"] = rec["area_px"] * um * um
    rec["perimeter_um"] = rec["perimeter_px"] * um
    if rgb is not None:
        px = np.asarray(rgb)[ys, xs].astype(np.float64)
        rec["mean_r"], rec["mean_g"], rec["mean_b"] = (float(v) for v in px[:, :3].mean(0))
    else:
        rec["mean_r"] = rec["mean_g"] = rec["mean_b"] = math.nan
    rec["mean_hematoxylin"] = (float(np.asarray(hema)[ys, xs].mean()) if hema is not None
                               else math.nan)
    poly = mask_polygon(mask, y0, x0, d, tolerance, outline=outline)
    rec["polygon"] = [[float(x), float(y)] for x, y in poly.exterior.coords]
    return rec
