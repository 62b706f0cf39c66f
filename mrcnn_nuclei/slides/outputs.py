"""Streamed, resumable output files of a whole-slide run.

Each writer appends as tiles are assembled and can be reopened at a recorded position
(``resume``): the run's journal stores, after every assembled tile, the byte length of the
GeoJSON and CSV files, so a restarted run truncates them there and continues; the label image is
a zarr array written in place.

* :class:`GeoJSONWriter`: a QuPath-importable ``FeatureCollection`` (File > Import objects):
  one ``Feature`` per nucleus with ``Polygon`` geometry in full-resolution slide pixels and
  ``properties`` ``objectType: "detection"``, ``classification {name, color [r, g, b]}`` and
  ``measurements`` (a name -> number dict, as QuPath 0.4+ writes it; NaN values are left out).
* :class:`TableWriter`: the per-nucleus CSV (columns :data:`~.measure.TABLE_COLUMNS`; NaN is an
  empty field), converted to Parquet at the end when pyarrow is installed.
* :class:`LabelZarr`: the label image [H, W] int32 (0 = background, k = nucleus id k) on the
  working grid as OME-Zarr (NGFF 0.4, zarr format 2): level 0 is written tile by tile; the
  pyramid (2x nearest-neighbour levels, computed chunk by chunk) and the multiscales /
  ``image-label`` metadata are written at the end, so napari (napari-ome-zarr) opens it as a
  labels layer, scaled in microns when the slide's resolution is known.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np

from .measure import MEASUREMENT_NAMES, TABLE_COLUMNS

__all__ = ["GeoJSONWriter", "TableWriter", "LabelZarr", "CLASS_COLORS", "csv_to_parquet"]

#: Colours (RGB) of class ids 1, 2, ... (cycled).
CLASS_COLORS = ((220, 40, 40), (40, 160, 40), (40, 90, 220), (230, 160, 20), (150, 60, 200),
                (20, 180, 190))

_HEADER = '{"type": "FeatureCollection", "features": [\n'
_FOOTER = '\n]}\n'


def _finite(v):
    return v is not None and not (isinstance(v, float) and math.isnan(v))


class _Appender:
    """A text file appended to, resumable at a byte position."""

    header = ""

    def __init__(self, path, resume_at=None):
        self.path = os.fspath(path)
        if resume_at is None or not os.path.exists(self.path) or \
                os.path.getsize(self.path) < resume_at:
            self.f = open(self.path, "w+b")
            self.f.write(self.header.encode())
        else:
            self.f = open(self.path, "r+b")
            self.f.truncate(resume_at)
            self.f.seek(resume_at)

    def tell(self):
        self.f.flush()
        return self.f.tell()

    def close(self):
        if not self.f.closed:
            self.f.close()


class GeoJSONWriter(_Appender):
    """Streamed QuPath GeoJSON.  ``n_features``: features already in the file (when resuming)."""

    header = _HEADER

    def __init__(self, path, class_names, resume_at=None, n_features=0):
        super().__init__(path, resume_at)
        self.class_names = tuple(class_names)
        self.n = int(n_features) if resume_at is not None and self.tell() > len(_HEADER) else 0

    def feature(self, polygon, class_id, measurements):
        """polygon: closed ring [[x, y], ...] in slide pixels; class_id 1-based."""
        k = max(1, int(class_id))
        name = self.class_names[k - 1] if k <= len(self.class_names) else f"class_{k}"
        return {"type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [polygon]},
                "properties": {"objectType": "detection",
                               "classification": {"name": name,
                                                  "color": list(CLASS_COLORS[(k - 1) %
                                                                             len(CLASS_COLORS)])},
                               "measurements": {m: round(float(measurements[m]), 4)
                                                for m in MEASUREMENT_NAMES
                                                if _finite(measurements.get(m))},
                               "name": f"nucleus {measurements.get('id', '')}".strip()}}

    def write(self, features):
        parts = []
        for feat in features:
            parts.append(("" if self.n == 0 else ",\n") + json.dumps(feat, separators=(",", ":")))
            self.n += 1
        if parts:
            self.f.write("".join(parts).encode())

    def finish(self):
        """Close the collection (the file is then complete JSON); position before the footer
        stays resumable."""
        self.f.write(_FOOTER.encode())
        self.f.flush()


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else repr(round(float(v), 4))
    return str(v)


class TableWriter(_Appender):
    """Streamed per-nucleus CSV (see :data:`~.measure.TABLE_COLUMNS`)."""

    header = ",".join(TABLE_COLUMNS) + "\n"

    def write(self, rows):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for row in rows:
            w.writerow([_fmt(row[c]) for c in TABLE_COLUMNS])
        self.f.write(buf.getvalue().encode())


def csv_to_parquet(csv_path):
    """Write ``name.parquet`` beside ``name.csv`` when pyarrow is installed; the path or None."""
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        return None
    out = os.path.splitext(os.fspath(csv_path))[0] + ".parquet"
    pq.write_table(pacsv.read_csv(csv_path), out)
    return out


class LabelZarr:
    """OME-Zarr label image [H, W] int32 (see the module docstring).

    path: the ``.ome.zarr`` folder.  shape: working grid (H, W).  scale: microns (or pixels,
    ``unit=None``) per level-0 pixel on each axis.  chunk: chunk side.
    """

    def __init__(self, path, shape, chunk=1024, create=True):
        import zarr

        self.path = os.fspath(path)
        self.shape = tuple(int(v) for v in shape)
        self.chunk = int(chunk)
        if create or not os.path.exists(os.path.join(self.path, "0", ".zarray")):
            self.group = zarr.open_group(self.path, mode="w", zarr_format=2)
            self.level0 = self._create("0", self.shape)
        else:
            self.group = zarr.open_group(self.path, mode="r+", zarr_format=2)
            self.level0 = self.group["0"]

    def _create(self, name, shape):
        c = min(self.chunk, max(shape))
        return self.group.create_array(name, shape=shape, chunks=(c, c), dtype="int32",
                                       fill_value=0, overwrite=True,
                                       chunk_key_encoding={"name": "v2", "separator": "/"})

    def clear_from(self, box, first_id):
        """Zero the labels >= ``first_id`` inside box (y0, y1, x0, x1): undoes a tile pasted
        only partly before a crash."""
        y0, y1, x0, x1 = box
        region = self.level0[y0:y1, x0:x1]
        stale = region >= first_id
        if stale.any():
            region[stale] = 0
            self.level0[y0:y1, x0:x1] = region

    def finish(self, scale=(1.0, 1.0), unit=None, min_size=256, name="nuclei"):
        """Build the pyramid (each level half the previous, nearest neighbour, until the long
        side is under ``min_size``) and write the NGFF metadata.  Returns the level shapes."""
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import write_multiscales_metadata

        shapes = [self.shape]
        prev = self.level0
        level = 0
        while max(shapes[-1]) > min_size and min(shapes[-1]) > 1:
            h, w = shapes[-1]
            nh, nw = (h + 1) // 2, (w + 1) // 2
            level += 1
            arr = self._create(str(level), (nh, nw))
            step = arr.chunks[0]
            for y in range(0, nh, step):
                for x in range(0, nw, step):
                    block = prev[2 * y:2 * (y + step), 2 * x:2 * (x + step)][::2, ::2]
                    arr[y:y + block.shape[0], x:x + block.shape[1]] = block
            shapes.append((nh, nw))
            prev = arr
        # drop levels left over from an earlier, larger run
        for key in list(self.group.array_keys()):
            if key.isdigit() and int(key) > level:
                del self.group[key]
        axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "yx"]
        datasets = [{"path": str(i),
                     "coordinateTransformations": [{"type": "scale",
                                                    "scale": [float(scale[0]) * 2 ** i,
                                                              float(scale[1]) * 2 ** i]}]}
                    for i in range(len(shapes))]
        write_multiscales_metadata(self.group, datasets, fmt=FormatV04(), axes=axes, name=name)
        self.group.attrs["image-label"] = {"version": "0.4"}
        return shapes
