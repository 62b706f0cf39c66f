"""Seeded synthetic nuclei images with exact instance masks (for tests, demos and smoke training).

Each image is a pure function of ``(seed, image index)`` and the load parameters: it is generated
on demand by :meth:`SyntheticNucleiDataset.load_image`/``load_mask`` (nothing is stored but the
most recently generated image). Nuclei are slightly irregular ellipses of varied size,
orientation and brightness with inner texture, drawn in order; some are placed against an earlier
nucleus so that touching and overlapping clumps occur. Where nuclei overlap, the pixel belongs to
the one drawn later (on top). A nucleus that a later one cuts into pieces keeps only its largest
4-connected piece (the other pieces become background, in the image too), and a nucleus whose
visible part is smaller than ``min_area`` pixels is removed. So masks never overlap, each mask is
one 4-connected object of at least ``min_area`` pixels, and the image shows exactly the masks.

Colours: ``"grey"`` looks like DSB fluorescence (bright nuclei on a dark background, replicated to
RGB); ``"he"`` looks like H&E (hematoxylin-purple nuclei on eosin-pink), built with the
Beer-Lambert law from hematoxylin/eosin densities; ``"mixed"`` picks one of the two per image.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.measure import label as _label_regions

from ..data.convert import to_uint8
from ..data.dataset import Dataset

__all__ = ["SyntheticNucleiDataset", "synthesize"]

_COLOURS = ("grey", "he", "mixed")
# Optical-density directions of hematoxylin and eosin (RGB), from colour deconvolution practice.
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
_EOSIN = np.array([0.072, 0.990, 0.105], np.float32)


def _smooth_noise(rng, shape, sigma):
    """``[H, W]`` float32 Gaussian-smoothed white noise with unit standard deviation.

    Wide fields (``sigma > 3``) are drawn on a grid 4x coarser and upsampled bilinearly, which
    looks the same and is ~10x faster than filtering at full size.
    """
    step = 4 if sigma > 3 else 1
    coarse = (-(-shape[0] // step) + 2, -(-shape[1] // step) + 2) if step > 1 else shape
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma / step,
                                    truncate=3.0)
    if step > 1:
        field = ndimage.zoom(field, step, order=1, grid_mode=False)[:shape[0], :shape[1]]
    std = field.std()
    return field / std if std > 0 else field


def _place(rng, n, height, width, radius, overlap):
    """Centres ``[n]``, semi-axes ``[n]``, angles ``[n]`` of the nuclei to draw (n may shrink)."""
    r_lo, r_hi = radius
    if overlap:
        a = rng.uniform(r_lo, r_hi, n)
        cy = rng.uniform(0, height - 1, n)
        cx = rng.uniform(0, width - 1, n)
        # About 40 % of the nuclei lean against another one: touching / overlapping clumps.
        if n > 1:
            lean = rng.random(n) < 0.4
            lean[0] = False
            parent = np.floor(rng.random(n) * np.arange(n)).astype(int)  # an earlier nucleus
            phi = rng.uniform(0, 2 * np.pi, n)
            dist = (a + a[parent]) * rng.uniform(0.55, 1.0, n)
            cy = np.where(lean, np.clip(cy[parent] + dist * np.sin(phi), 0, height - 1), cy)
            cx = np.where(lean, np.clip(cx[parent] + dist * np.cos(phi), 0, width - 1), cx)
    else:
        m = 6 * n + 20
        a = rng.uniform(r_lo, r_hi, m)
        cy = rng.uniform(0, height - 1, m)
        cx = rng.uniform(0, width - 1, m)
        # Keep a candidate only if its circumscribed circle (+1 px) is clear of all earlier ones.
        dist = np.hypot(cy[:, None] - cy[None, :], cx[:, None] - cx[None, :])
        clash = np.triu(dist < a[:, None] + a[None, :] + 1.5, k=1).any(axis=0)
        keep = np.flatnonzero(~clash)[:n]
        a, cy, cx = a[keep], cy[keep], cx[keep]
        n = len(keep)
    b = a * rng.uniform(0.55, 1.0, n)
    theta = rng.uniform(0, np.pi, n)
    wobble = rng.uniform(0.0, 0.12, n)
    wobble_phase = rng.uniform(0, 2 * np.pi, n)
    return cy, cx, a, b, theta, wobble, wobble_phase


def _rasterise(height, width, cy, cx, a, b, theta, wobble, wobble_phase, r_max):
    """Paint nuclei in order -> label map ``[H, W]`` int32 (later on top) and radial shade."""
    n = len(cy)
    labels = np.zeros(height * width, np.int32)
    shade = np.zeros(height * width, np.float32)
    if n == 0:
        return labels.reshape(height, width), shade.reshape(height, width)
    half = int(math.ceil(r_max * 1.15)) + 1
    off = np.arange(-half, half + 1)
    yy = np.rint(cy).astype(int)[:, None, None] + off[None, :, None]     # [n, P, 1]
    xx = np.rint(cx).astype(int)[:, None, None] + off[None, None, :]     # [n, 1, P]
    dy = yy - cy[:, None, None]
    dx = xx - cx[:, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * cos + dy * sin) / a[:, None, None]
    v = (-dx * sin + dy * cos) / b[:, None, None]
    r = np.sqrt(u * u + v * v)                                             # [n, P, P]
    angle = np.arctan2(v, u)
    edge = 1.0 + wobble[:, None, None] * np.sin(3.0 * angle + wobble_phase[:, None, None])
    inside = (r <= edge) & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    k, iy, ix = np.nonzero(inside)
    flat = (yy[k, iy, 0] * width + xx[k, 0, ix])
    np.maximum.at(labels, flat, k + 1)
    top = labels[flat] == k + 1
    shade[flat[top]] = (r[k, iy, ix] / edge[k, iy, ix])[top]
    return labels.reshape(height, width), shade.reshape(height, width)


def _clean(labels, min_area):
    """Keep each label's largest 4-connected piece if >= ``min_area``; relabel 1..M in order."""
    if labels.max() == 0:
        return labels
    pieces = _label_regions(labels, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    size = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    owner = np.zeros(n_pieces + 1, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    ids = np.arange(1, n_pieces + 1)
    order = np.lexsort((size[ids], owner[ids]))          # by owner, then size
    owners_sorted = owner[ids][order]
    last = np.append(owners_sorted[1:] != owners_sorted[:-1], True)
    best = ids[order][last]                              # largest piece of each owner
    best = best[size[best] >= min_area]
    keep_piece = np.zeros(n_pieces + 1, bool)
    keep_piece[best] = True
    kept_owners = np.sort(owner[best])
    relabel = np.zeros(int(labels.max()) + 1, np.int32)
    relabel[kept_owners] = np.arange(1, len(kept_owners) + 1, dtype=np.int32)
    return np.where(keep_piece[pieces], relabel[labels], 0).astype(np.int32)


def _render(rng, labels, shade, colour):
    """Label map + shade -> float image in 0..1, ``[H, W]`` (grey) or ``[H, W, 3]`` (he)."""
    height, width = labels.shape
    n = int(labels.max())
    texture = _smooth_noise(rng, (height, width), rng.uniform(0.8, 1.6))
    background = _smooth_noise(rng, (height, width), rng.uniform(6.0, 14.0))
    inside = labels > 0
    dome = 1.0 - rng.uniform(0.15, 0.45) * shade * shade
    if colour == "grey":
        bright = np.concatenate([[0.0], rng.uniform(0.3, 1.0, n)]).astype(np.float32)
        image = rng.uniform(0.02, 0.10) + 0.02 * background
        nucleus = bright[labels] * dome * (1.0 + 0.12 * texture)
        image = np.where(inside, nucleus, image).astype(np.float32)
        image = ndimage.gaussian_filter(image, rng.uniform(0.4, 1.2))
        image += np.float32(rng.uniform(0.005, 0.03)) * rng.standard_normal(image.shape, np.float32)
        return np.clip(image, 0.0, 1.0)
    density = np.concatenate([[0.0], rng.uniform(0.5, 1.3, n)]).astype(np.float32)
    hema = np.where(inside, density[labels] * dome * (1.0 + 0.2 * texture),
                    0.04 + 0.03 * background).astype(np.float32)
    eosin = (rng.uniform(0.15, 0.35) * (1.0 + 0.35 * background)
             * np.where(inside, 0.5, 1.0)).astype(np.float32)
    sigma = rng.uniform(0.4, 1.0)
    hema = ndimage.gaussian_filter(hema, sigma)
    eosin = ndimage.gaussian_filter(eosin, sigma)
    # Camera noise on the densities (shared by R, G, B: cheaper, and looks the same).
    hema += np.float32(rng.uniform(0.005, 0.03)) * rng.standard_normal(hema.shape, np.float32)
    od = (hema[..., None] * (-1.6 * _HEMATOXYLIN)
          + np.clip(eosin, 0, None)[..., None] * (-1.6 * _EOSIN))
    return np.clip(np.exp(od, out=od), 0.0, 1.0)


def synthesize(height=256, width=256, seed=0, index=0, colour="grey", min_nuclei=5,
               max_nuclei=40, radius=(5, 14), overlap=True, min_area=None):
    """Generate one image and its label map.

    Returns ``image`` float32 in 0..1 (``[H, W]`` for grey, ``[H, W, 3]`` for he) and ``labels``
    ``[H, W]`` int32 (0 background, 1..N nuclei in drawing order). ``min_nuclei`` is met by
    redrawing (up to 8 times) when occlusion removed too many nuclei; ``colour`` is "grey" or "he".
    """
    r_lo, r_hi = float(radius[0]), float(radius[1])
    if min_area is None:
        min_area = max(8, int(0.25 * math.pi * r_lo * r_lo))
    rng = np.random.default_rng([int(seed), int(index)])
    for _ in range(8):
        n = int(rng.integers(min_nuclei, max_nuclei + 1))
        params = _place(rng, n, height, width, (r_lo, r_hi), overlap)
        labels, shade = _rasterise(height, width, *params, r_max=r_hi)
        labels = _clean(labels, min_area)
        if labels.max() >= min_nuclei:
            break
    shade = np.where(labels > 0, shade, 0.0).astype(np.float32)
    return _render(rng, labels, shade, colour), labels


class SyntheticNucleiDataset(Dataset):
    """Synthetic nuclei images generated on demand; class 1 ``"nucleus"`` of source ``"synthetic"``.

    ``ds.load(count, seed=0, ...)`` then ``ds.prepare()``; see :meth:`load`.
    """

    def __init__(self, class_map=None):
        super().__init__(class_map)
        self._last = None  # (image_id, image uint8, labels) of the most recent generation

    def load(self, count, seed=0, height=256, width=256, colour="grey", min_nuclei=5,
             max_nuclei=40, radius=(5, 14), overlap=True, channels=3, min_area=None):
        """Register ``count`` synthetic images.

        count: number of images. seed: non-negative int; image i is generated from (seed, i).
        height, width: image size. colour: "grey", "he" or "mixed" (per-image random choice).
        min_nuclei, max_nuclei: range of the nucleus count (min_nuclei=0 allows empty images).
        radius: (min, max) major semi-axis in pixels. overlap: allow touching/overlapping nuclei
        (False keeps them apart). channels: 1 (luminance) or 3. min_area: smallest visible nucleus
        in pixels (default max(8, pi * radius[0]**2 / 4)).
        """
        if int(count) != count or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if colour not in _COLOURS:
            raise ValueError(f"colour must be one of {_COLOURS}, got {colour!r}")
        if not (0 <= int(min_nuclei) <= int(max_nuclei)):
            raise ValueError(f"need 0 <= min_nuclei <= max_nuclei, got {min_nuclei}, {max_nuclei}")
        if len(radius) != 2 or not 1 <= radius[0] <= radius[1]:
            raise ValueError(f"radius must be (min, max) with 1 <= min <= max, got {radius!r}")
        if int(height) < 8 or int(width) < 8:
            raise ValueError(f"height and width must be at least 8, got {height}x{width}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3 for SyntheticNucleiDataset, got {channels!r}"
                             "; stack extra channels yourself if you need more")
        self.channel_count = int(channels)
        self.add_class("synthetic", 1, "nucleus")
        first = len(self.image_info)
        for i in range(int(count)):
            if colour == "mixed":
                pick = np.random.default_rng([int(seed), i, 1]).random() < 0.5
                image_colour = "he" if pick else "grey"
            else:
                image_colour = colour
            self.add_image("synthetic", image_id=first + i, path=None, height=int(height),
                           width=int(width), seed=int(seed), index=i, colour=image_colour,
                           min_nuclei=int(min_nuclei), max_nuclei=int(max_nuclei),
                           radius=(float(radius[0]), float(radius[1])), overlap=bool(overlap),
                           min_area=min_area)
        return self

    def check_image(self, image_id, channels=None):
        """Generated images cannot be unreadable: only the channel count is compared."""
        self._info(image_id)
        want = self.channel_count if channels is None else int(channels)
        if want != self.channel_count:
            return [f"wrong channel count: the dataset gives {self.channel_count} channel(s), "
                    f"expected {want} (IMAGE_CHANNEL_COUNT; load(..., channels={want}))"]
        return []

    def image_reference(self, image_id):
        """``"synthetic:seed=<seed>:index=<i>:<colour>"``."""
        info = self._info(image_id)
        return f"synthetic:seed={info['seed']}:index={info['index']}:{info['colour']}"

    def _generate(self, image_id):
        last = self._last
        if last is not None and last[0] == image_id:
            return last[1], last[2]
        info = self._info(image_id)
        image, labels = synthesize(info["height"], info["width"], info["seed"], info["index"],
                                   info["colour"], info["min_nuclei"], info["max_nuclei"],
                                   info["radius"], info["overlap"], info["min_area"])
        image = to_uint8(image, channels=self.channel_count)
        self._last = (image_id, image, labels)
        return image, labels

    def load_image(self, image_id):
        """Generated image ``[H, W, channel_count]`` uint8."""
        return self._generate(image_id)[0].copy()

    def load_labels(self, image_id):
        """Label image ``[H, W]`` int32 (0 background, 1..N the instances of load_mask)."""
        return self._generate(image_id)[1].copy()

    def load_mask(self, image_id):
        """Instance masks ``[H, W, N]`` bool (disjoint, each one 4-connected) and ``[N]`` ones."""
        labels = self._generate(image_id)[1]
        n = int(labels.max())
        masks = labels[:, :, None] == np.arange(1, n + 1, dtype=np.int32)
        return masks, np.ones(n, np.int32)
