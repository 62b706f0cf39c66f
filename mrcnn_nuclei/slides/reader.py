"""Whole-slide input: read a slide region by region at a chosen level or physical resolution.

Pyramidal TIFF, OME-TIFF, SVS and plain (large) TIFF files are read with ``tiffslide``: it is
pure Python on top of tifffile and zarr (no system library such as OpenSlide's C binary to
install, so the same ``pip install`` works on a laptop, in CI and on cluster workers), it keeps
OpenSlide's API (``level_dimensions``, ``read_region``...), reads only the tiles a region needs,
and it is maintained.  PNG/JPEG (and anything else PIL opens) are read whole with PIL: such files
are small enough to hold in memory.

Coordinates.  The slide is segmented on a WORKING grid: a pyramid level (``level``) or a
physical resolution (``mpp``, microns per pixel).  ``downsample`` d is the size of one working
pixel in full-resolution (level-0) pixels; working pixel (y, x) covers level-0 pixels
[y*d, (y+1)*d) x [x*d, (x+1)*d).  With ``mpp`` the finest level that is not coarser than the
target is read and resized by the remaining factor.

    reader = SlideReader("slide.svs", mpp=0.5)
    rgb = reader.read(y, x, h, w)     # [h, w, 3] uint8 on the working grid
"""

from __future__ import annotations

import os
import threading

import numpy as np

__all__ = ["SlideReader", "PIL_SUFFIXES"]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _as_rgb(a):
    """[h, w] grey or [h, w, C] -> [h, w, 3] (grey repeated, alpha and extra channels dropped)."""
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, -1)
    if a.shape[-1] < 3:
        return np.repeat(a[..., :1], 3, -1)
    return a[..., :3]


class SlideReader:
    """One slide opened for region reads.

    path: slide file.  level: pyramid level to segment at (default 0).  mpp: target microns per
    pixel instead of a level (needs the file's mpp, or ``base_mpp``).  base_mpp: microns per
    level-0 pixel, overriding (or supplying) the file's metadata.

    Attributes: ``shape`` (H, W) of the working grid, ``downsample`` (level-0 pixels per working
    pixel, float), ``base_mpp`` (level-0 microns per pixel, or None), ``mpp`` (working microns per
    pixel, or None), ``full_shape`` (level-0 H, W).  Picklable (reopens lazily), so a reader can
    be sent to Dask workers.
    """

    def __init__(self, path, level=None, mpp=None, base_mpp=None):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"slide {path} not found")
        if level is not None and mpp is not None:
            raise ValueError(f"{path}: give a level or an mpp, not both")
        self.path = os.path.abspath(path)
        self.kind = "pil" if path.lower().endswith(PIL_SUFFIXES) else "tiff"
        self._handle = None
        self._lock = threading.Lock()
        dims, downs, file_mpp = self._describe()
        self.base_mpp = float(base_mpp) if base_mpp else file_mpp
        self.full_shape = (int(dims[0][1]), int(dims[0][0]))
        self.level_downsamples = tuple(float(d) for d in downs)
        self.level_dimensions = tuple((int(w), int(h)) for w, h in dims)
        if mpp is not None:
            if not self.base_mpp:
                raise ValueError(f"{path}: --mpp {mpp} needs the slide's microns per pixel, but "
                                 "the file has none; pass base_mpp (--base-mpp) or use --level")
            target = float(mpp) / self.base_mpp
            if target < 1 - 1e-6:
                raise ValueError(f"{path}: mpp={mpp} is finer than the scan ({self.base_mpp:.4f} "
                                 "um/px); upsampling is not supported")
            ok = [i for i, d in enumerate(self.level_downsamples) if d <= target * (1 + 1e-3)]
            self.level = max(ok, key=lambda i: self.level_downsamples[i])
            self.downsample = target
        else:
            self.level = int(level or 0)
            if not 0 <= self.level < len(self.level_dimensions):
                raise ValueError(f"{path}: level {self.level} does not exist; the slide has "
                                 f"{len(self.level_dimensions)} level(s) {self.level_dimensions}")
            self.downsample = self.level_downsamples[self.level]
        self.mpp = self.base_mpp * self.downsample if self.base_mpp else None
        # working grid: level size, or level-0 size / target downsample
        if mpp is None:
            w, h = self.level_dimensions[self.level]
        else:
            h = int(self.full_shape[0] // self.downsample)
            w = int(self.full_shape[1] // self.downsample)
        self.shape = (int(h), int(w))
        # extra resize from the read level to the working grid (1.0 when reading a level as is)
        self._resize = self.downsample / self.level_downsamples[self.level]

    # -------------------------------------------------------------------------------- opening
    def _open(self):
        with self._lock:
            return self._open_locked()

    def _open_locked(self):
        if self._handle is None:
            if self.kind == "pil":
                from PIL import Image

                with Image.open(self.path) as im:
                    self._handle = np.asarray(im.convert("RGB"))
            else:
                import tiffslide

                self._handle = tiffslide.TiffSlide(self.path)
        return self._handle

    def _describe(self):
        handle = self._open()
        if self.kind == "pil":
            h, w = handle.shape[:2]
            return [(w, h)], [1.0], None
        props = handle.properties
        mpp = props.get("tiffslide.mpp-x") or props.get("openslide.mpp-x")
        return handle.level_dimensions, handle.level_downsamples, (float(mpp) if mpp else None)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self):
        if self._handle is not None and self.kind != "pil":
            self._handle.close()
        self._handle = None

    # -------------------------------------------------------------------------------- reading
    def read(self, y, x, h, w):
        """Region [h, w, 3] uint8 of the working grid starting at (y, x) (must lie inside)."""
        y, x, h, w = int(y), int(x), int(h), int(w)
        if y < 0 or x < 0 or y + h > self.shape[0] or x + w > self.shape[1]:
            raise ValueError(f"{self.path}: region y={y}:{y + h} x={x}:{x + w} outside the "
                             f"working grid {self.shape}")
        handle = self._open()
        if self.kind == "pil":
            return np.ascontiguousarray(handle[y:y + h, x:x + w, :3])
        f = self._resize
        lds = self.level_downsamples[self.level]
        lw, lh = self.level_dimensions[self.level]
        # level-pixel window covering the working region
        ly0, lx0 = int(np.floor(y * f)), int(np.floor(x * f))
        ly1 = min(lh, int(np.ceil((y + h) * f)))
        lx1 = min(lw, int(np.ceil((x + w) * f)))
        loc = (int(round(lx0 * lds)), int(round(ly0 * lds)))
        with self._lock:  # one file handle: reads from several threads take turns
            region = handle.read_region(loc, self.level, (lx1 - lx0, ly1 - ly0), as_array=True)
        region = _as_rgb(np.asarray(region))
        if region.dtype != np.uint8:
            from ..data.convert import to_uint8

            region = to_uint8(region, 3)
        if abs(f - 1.0) > 1e-9:
            from skimage.transform import resize

            # resample the level window onto the working pixels (area-averaging when shrinking)
            out = resize(region, (int(round((ly1 - ly0) / f)), int(round((lx1 - lx0) / f))),
                         order=1, anti_aliasing=f > 1, preserve_range=True)
            oy, ox = int(round(y - ly0 / f)), int(round(x - lx0 / f))
            out = out[oy:oy + h, ox:ox + w]
            pad = ((0, h - out.shape[0]), (0, w - out.shape[1]), (0, 0))
            region = np.pad(np.clip(np.rint(out), 0, 255).astype(np.uint8), pad, mode="edge")
        return np.ascontiguousarray(region[:h, :w])

    def thumbnail(self, max_size=2048):
        """Low-resolution RGB image [h, w, 3] uint8 of the whole slide (the coarsest level at
        least ``max_size``/4 px on its long side, shrunk to fit ``max_size``) and its scale:
        working pixels per thumbnail pixel (sy, sx)."""
        handle = self._open()
        if self.kind == "pil":
            img = handle[..., :3]
        else:
            levels = range(len(self.level_dimensions))
            good = [i for i in levels if max(self.level_dimensions[i]) >= max_size // 4]
            lvl = max(good or [0], key=lambda i: self.level_downsamples[i])
            w, h = self.level_dimensions[lvl]
            step = max(1, int(np.ceil(max(w, h) / max_size)))
            lds = self.level_downsamples[lvl]
            rows = []
            for y0 in range(0, h, 256 * step):  # strips: memory bounded by one strip
                sh = min(256 * step, h - y0)
                strip = handle.read_region((0, int(round(y0 * lds))), lvl, (w, sh), as_array=True)
                rows.append(_as_rgb(np.asarray(strip))[::step, ::step])
            img = np.concatenate(rows, 0)
        if self.kind == "pil":
            step = max(1, int(np.ceil(max(img.shape[:2]) / max_size)))
            img = img[::step, ::step]
        sy = self.shape[0] / img.shape[0]
        sx = self.shape[1] / img.shape[1]
        return np.ascontiguousarray(img), (sy, sx)
