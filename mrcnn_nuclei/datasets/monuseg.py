"""MoNuSeg (Kumar et al.) H&E tiles with Aperio XML nucleus polygons.

Layout read by :meth:`MoNuSegDataset.load` (as released)::

    <root>/Tissue_Images/<name>.tif    1000x1000 RGB H&E tile (LZW TIFF, read with Pillow)
    <root>/Annotations/<name>.xml      Aperio XML: Annotation/Regions/Region/Vertices/Vertex X, Y

(The test release, with ``.tif`` and ``.xml`` side by side in one folder, is accepted too.)

Each ``Region`` is one nucleus polygon in float pixel coordinates (X = column, Y = row). Polygons
are rasterised (pixels whose centre lies inside or on the boundary: the rule of
``skimage.draw.polygon``, which it matches on the MoNuSeg tiles up to a few pixels per million,
but all polygons of a tile in one vectorised scan-line pass, ~20x faster) in file order and
**later regions win** overlapped pixels, so instance masks never overlap; a partly covered
nucleus keeps its visible pixels. A region is *degenerate* when it has fewer than 3 vertices
(``"vertices"``), covers no pixel centre (``"empty"``) or is entirely covered by later regions,
e.g. a duplicated annotation (``"covered"``). Degenerate regions yield no instance; they are
logged and listed in ``image_info["degenerate"]`` as ``(region index, Region Id, reason)``, so
``len(instances) == image_info["n_regions"] - len(image_info["degenerate"])``. An annotation file
with no ``Region`` at all raises a ``ValueError`` naming it (``load(..., skip_empty=True)`` skips
and logs such tiles instead).

``image_info["organ"]`` comes from the TCGA tissue-source-site code (``TCGA-<site>-...``) via
``mrcnn_nuclei.folds.organ_of``: the organ labels of the MoNuSeg release (which calls the sites
18/21/38/49/50 "liver"); unknown sites give ``None``.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.convert import to_uint8
from ..data.dataset import Dataset
from ..folds import ORGAN_BY_SITE, organ_of  # one site -> organ table for the project

__all__ = ["MoNuSegDataset", "parse_aperio_xml", "polygon_pixels", "rasterise_polygons",
           "ORGAN_BY_SITE", "organ_of"]

logger = logging.getLogger(__name__)

SOURCE = "monuseg"

_REGION_RE = re.compile(rb'<Region\s[^>]*?\bId="([^"]*)"')
_VERTEX_RE = re.compile(rb'<Vertex\s+X="([^"]*)"\s+Y="([^"]*)"')


def parse_aperio_xml(path):
    """Read an Aperio annotation file -> list of ``(region_id, [K, 2] float32 (x, y))``.

    A regular-expression fast path handles the usual ``<Vertex X=".." Y=".."/>`` layout (about
    3x faster than a DOM parse of these 4 MB files); anything else goes through ElementTree.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read annotation file {path}: {exc}") from exc
    regions = list(_REGION_RE.finditer(data))
    starts = [m.start() for m in regions] + [len(data)]
    counts = [data.count(b"<Vertex", starts[i], starts[i + 1]) for i in range(len(regions))]
    pairs = _VERTEX_RE.findall(data)
    if (b"<Annotations" in data and len(pairs) == data.count(b"<Vertex") == sum(counts)
            and len(regions) == len(re.findall(rb"<Region\s", data))):
        try:
            xy = np.array(pairs, dtype=np.bytes_).reshape(-1, 2).astype(np.float64)
        except ValueError:
            xy = None
        if xy is not None:
            xy = xy.astype(np.float32)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            return [(m.group(1).decode(), xy[bounds[i]:bounds[i + 1]])
                    for i, m in enumerate(regions)]
    return _parse_aperio_xml_dom(path)


def _parse_aperio_xml_dom(path):
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"cannot parse annotation file {path}: {exc}") from exc
    regions = []
    for region in root.iter("Region"):
        vertices = region.findall("./Vertices/Vertex")
        try:
            xy = np.array([(float(v.get("X")), float(v.get("Y"))) for v in vertices],
                          np.float32).reshape(-1, 2)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: Region Id={region.get('Id')} has a Vertex without numeric "
                             f"X/Y ({exc})") from None
        regions.append((region.get("Id"), xy))
    return regions


def polygon_pixels(polygons, shape):
    """Pixels inside each polygon, all polygons at once (vectorised scan-line fill).

    polygons: list of ``[K, 2]`` (x, y) vertex arrays. shape: ``(H, W)``.
    A pixel ``(r, c)`` belongs to a polygon when its centre lies inside (even-odd rule) or on
    the boundary, the rule of ``skimage.draw.polygon``. Returns ``rows``, ``cols``, ``owner``
    (polygon index), int64 arrays sorted by owner. Polygons with < 3 vertices give no pixel.
    """
    height, width = int(shape[0]), int(shape[1])
    sizes = np.array([len(p) for p in polygons], np.int64)
    use = np.flatnonzero(sizes >= 3)
    empty = (np.zeros(0, np.int64),) * 3
    if use.size == 0:
        return empty
    xy = np.concatenate([np.asarray(polygons[i], np.float64).reshape(-1, 2) for i in use])
    counts = sizes[use]
    owner_v = np.repeat(use, counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    prev = np.arange(len(xy)) - 1
    prev[first] = first + counts - 1                      # edge from the last vertex to the first
    xi, yi = xy[:, 0], xy[:, 1]
    xj, yj = xi[prev], yi[prev]
    # Rows whose centre line crosses an edge: y_lo <= r < y_hi, inside the image.
    r0 = np.maximum(np.ceil(np.minimum(yi, yj)), 0).astype(np.int64)
    r1 = np.minimum(np.ceil(np.maximum(yi, yj)) - 1, height - 1).astype(np.int64)
    n_rows = np.maximum(r1 - r0 + 1, 0)
    edge = np.repeat(np.arange(len(xy)), n_rows)
    if edge.size == 0:
        return empty
    row = r0[edge] + np.arange(edge.size) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    cross = (xj[edge] - xi[edge]) * (row - yi[edge]) / (yj[edge] - yi[edge]) + xi[edge]
    owner = owner_v[edge]
    order = np.lexsort((cross, row, owner))
    cross, row, owner = cross[order], row[order], owner[order]
    # Crossings come in pairs per (polygon, row); centres with x_a <= c <= x_b are inside or on
    # a slanted/vertical edge.
    c0 = np.maximum(np.ceil(cross[0::2]), 0).astype(np.int64)
    c1 = np.minimum(np.floor(cross[1::2]), width - 1).astype(np.int64)
    span_row, span_owner = row[0::2], owner[0::2]
    # Centres on horizontal edges (integer y) and on vertices with integer x and y: boundary,
    # counted as inside like skimage.draw.polygon does.
    flat_edge = (yi == yj) & (yi == np.round(yi)) & (yi >= 0) & (yi < height)
    c0 = np.concatenate([c0, np.maximum(np.ceil(np.minimum(xi, xj)[flat_edge]),
                                        0).astype(np.int64)])
    c1 = np.concatenate([c1, np.minimum(np.floor(np.maximum(xi, xj)[flat_edge]),
                                        width - 1).astype(np.int64)])
    span_row = np.concatenate([span_row, yi[flat_edge].astype(np.int64)])
    span_owner = np.concatenate([span_owner, owner_v[flat_edge]])
    on_grid = ((xi == np.round(xi)) & (yi == np.round(yi)) & (xi >= 0) & (xi < width)
               & (yi >= 0) & (yi < height))
    c0 = np.concatenate([c0, xi[on_grid].astype(np.int64)])
    c1 = np.concatenate([c1, xi[on_grid].astype(np.int64)])
    span_row = np.concatenate([span_row, yi[on_grid].astype(np.int64)])
    span_owner = np.concatenate([span_owner, owner_v[on_grid]])
    span = np.maximum(c1 - c0 + 1, 0)
    which = np.repeat(np.arange(span.size), span)
    cols = c0[which] + np.arange(which.size) - np.repeat(np.cumsum(span) - span, span)
    rows, owner = span_row[which], span_owner[which]
    # Boundary pixels may be listed twice; keep each (polygon, pixel) once.
    key = np.unique((owner * height + rows) * width + cols)
    return (key // width) % height, key % width, key // (width * height)


def rasterise_polygons(polygons, shape):
    """Polygons -> label image, later polygons on top.

    polygons: list of ``[K, 2]`` (x, y) vertex arrays. shape: ``(H, W)``.
    Returns ``labels`` ``[H, W]`` int32 with 0 = background and ``i + 1`` = polygon ``i`` where it
    is visible, and ``reasons``: sorted list of ``(i, "vertices" | "empty" | "covered")`` for
    polygons that end up with no pixel.
    """
    height, width = int(shape[0]), int(shape[1])
    n = len(polygons)
    rows, cols, owner = polygon_pixels(polygons, (height, width))
    labels = np.zeros(height * width, np.int32)
    np.maximum.at(labels, rows * width + cols, (owner + 1).astype(np.int32))  # last drawn wins
    drawn = np.bincount(owner, minlength=n) > 0
    visible = (np.bincount(labels, minlength=n + 1) > 0)[1:]
    few = np.array([len(p) < 3 for p in polygons], bool)
    reasons = [(int(i), "vertices") for i in np.flatnonzero(few)]
    reasons += [(int(i), "empty") for i in np.flatnonzero(~few & ~drawn)]
    reasons += [(int(i), "covered") for i in np.flatnonzero(drawn & ~visible)]
    return labels.reshape(height, width), sorted(reasons)


def _consecutive(labels, n):
    """Renumber the visible polygon labels 1..N in drawing order (int16 when it fits)."""
    present = np.zeros(n + 1, bool)
    present[labels.ravel()] = True
    present[0] = False
    count = int(present.sum())
    dtype = np.int16 if count < np.iinfo(np.int16).max else np.int32
    relabel = np.zeros(n + 1, dtype)
    relabel[present] = np.arange(1, count + 1)
    return relabel[labels]


def _find_dir(root, name, pattern):
    sub = root / name
    if sub.is_dir():
        return sub
    if any(root.glob(pattern)):
        return root
    raise FileNotFoundError(f"no {name}/ folder (and no {pattern} files) in {root}: pass the "
                            "MoNuSeg folder that holds Tissue_Images/ and Annotations/")


class MoNuSegDataset(Dataset):
    """MoNuSeg tiles: ``ds.load(root, names=None)`` then ``ds.prepare()``; class 1 "nucleus"."""

    def __init__(self, class_map=None):
        super().__init__(class_map)
        self._labels = {}  # image index -> int16/int32 label image rasterised by load()

    def load(self, root, names=None, channels=3, cache=True, skip_empty=False):
        """Register MoNuSeg tiles.

        root: folder holding ``Tissue_Images/`` and ``Annotations/`` (or both file kinds).
        names: tile names (with or without extension) to load; default every ``.xml`` that has a
        matching ``.tif`` (unpaired files are logged and skipped). channels: of ``load_image``.
        cache: keep the label images rasterised here (2 MB per 1000x1000 tile) for ``load_mask``.
        skip_empty: an annotation file without any ``Region`` (no nuclei, or not Aperio XML)
        raises a ``ValueError`` naming it; True skips such tiles instead (logged, listed in
        ``self.skipped``).
        Returns ``self``. Parses and rasterises every XML (~0.5 s per tile) to find the
        degenerate regions.
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"MoNuSeg root folder not found: {root}")
        image_dir = _find_dir(root, "Tissue_Images", "*.tif")
        xml_dir = _find_dir(root, "Annotations", "*.xml")
        tifs = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff")}
        xmls = {p.stem: p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml"}
        if names is None:
            names = sorted(set(tifs) & set(xmls))
            unpaired = sorted(set(tifs) ^ set(xmls))
            if unpaired:
                logger.warning("MoNuSegDataset: %d file(s) without their image/annotation "
                               "partner skipped (first: %s)", len(unpaired), unpaired[0])
            if not names:
                raise ValueError(f"no image/annotation pairs in {image_dir} and {xml_dir}")
        else:
            names = [Path(str(n)).stem if str(n).lower().endswith((".tif", ".tiff", ".xml"))
                     else str(n) for n in names]
            if not names:
                raise ValueError("empty names list: give at least one tile name")
            for name in names:
                if name not in tifs:
                    raise FileNotFoundError(f"image not found: {image_dir / (name + '.tif')}")
                if name not in xmls:
                    raise FileNotFoundError(f"annotation not found: {xml_dir / (name + '.xml')}")
        self.channel_count = int(channels)
        self.add_class(SOURCE, 1, "nucleus")
        n_regions = n_degenerate = 0
        skipped = []
        for name in names:
            try:
                with Image.open(tifs[name]) as im:
                    width, height = im.size
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"cannot read image file {tifs[name]}: {exc}") from exc
            regions = parse_aperio_xml(xmls[name])
            if not regions:
                if skip_empty:
                    skipped.append(name)
                    continue
                raise ValueError(f"annotation file {xmls[name]} has no Region polygons (image "
                                 f"{tifs[name]}): expected Aperio XML with Annotation/Regions/"
                                 "Region/Vertices/Vertex; pass skip_empty=True to skip tiles "
                                 "without nuclei")
            polygons = [xy for _, xy in regions]
            labels, reasons = rasterise_polygons(polygons, (height, width))
            degenerate = [(i, regions[i][0], why) for i, why in reasons]
            if degenerate:
                logger.info("MoNuSeg %s: %d of %d regions degenerate (%s)", name, len(degenerate),
                            len(regions), ", ".join(sorted({d[2] for d in degenerate})))
            self.add_image(SOURCE, image_id=name, path=str(tifs[name]),
                           annotation_path=str(xmls[name]), height=height, width=width,
                           organ=organ_of(name), n_regions=len(regions), degenerate=degenerate)
            if cache:
                self._labels[len(self.image_info) - 1] = _consecutive(labels, len(regions))
            n_regions += len(regions)
            n_degenerate += len(degenerate)
        if n_degenerate:
            logger.warning("MoNuSegDataset: %d of %d regions are degenerate and give no instance "
                           "(listed in image_info['degenerate'])", n_degenerate, n_regions)
        if skipped:
            logger.warning("MoNuSegDataset: skipped %d tile(s) whose annotation file has no "
                           "Region (first: %s)", len(skipped), xmls[skipped[0]])
        self.skipped = skipped
        return self

    def load_image(self, image_id):
        """Tile ``[H, W, channel_count]`` uint8 (Pillow reads the LZW TIFF)."""
        info = self._info(image_id)
        try:
            with Image.open(info["path"]) as im:
                array = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L", "I;16")
                                   else im)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"cannot read image file {info['path']}: {exc}") from exc
        return to_uint8(array, channels=self.channel_count, path=info["path"])

    def load_labels(self, image_id):
        """Label image ``[H, W]`` int32: 0 background, 1..N the instances of ``load_mask``."""
        info = self._info(image_id)
        cached = self._labels.get(int(image_id))
        if cached is not None:
            return cached.astype(np.int32)
        regions = parse_aperio_xml(info["annotation_path"])
        labels, _ = rasterise_polygons([xy for _, xy in regions], (info["height"], info["width"]))
        return _consecutive(labels, len(regions)).astype(np.int32)

    def load_mask(self, image_id):
        """Instance masks ``[H, W, N]`` bool (disjoint) and ``[N]`` int32 ones."""
        info = self._info(image_id)
        if info["source"] != SOURCE:
            return super().load_mask(image_id)
        labels = self.load_labels(image_id)
        n = int(labels.max())
        return labels[:, :, None] == np.arange(1, n + 1, dtype=np.int32), np.ones(n, np.int32)

    def check_image(self, image_id, channels=None):
        """Decode the tile and rasterise (or read cached) labels; compare sizes."""
        from ..data.checks import check_image_and_labels

        return check_image_and_labels(self, image_id, channels, self.load_labels, SOURCE)

    def image_reference(self, image_id):
        """Path of the tile image."""
        return self._info(image_id)["path"]
