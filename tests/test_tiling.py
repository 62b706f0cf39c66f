"""Tiled inference: one instance per nucleus across tile borders, equal to whole-image inference."""

import numpy as np
import pytest
from scipy import ndimage

from mrcnn_nuclei.inference.tiling import keep_in_core, paste_kept, tile_grid, tiled_detect


def _blob_image(size=1000, n=400, seed=0):
    """Bright discs (radius 4..14, some touching or overlapping) on a noisy dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:size, :size]
    img = rng.normal(40, 8, (size, size))
    for cy, cx, r in zip(rng.integers(0, size, n), rng.integers(0, size, n), rng.integers(4, 15, n)):
        sl = (slice(max(0, cy - r), cy + r + 1), slice(max(0, cx - r), cx + r + 1))
        disc = (yy[sl[0]] - cy) ** 2 + (xx[:, sl[1]] - cx) ** 2 <= r * r
        img[sl][disc] = 200 + rng.normal(0, 8, disc.sum())
    return np.clip(img, 0, 255).astype(np.uint8)


def threshold_labels(tile):
    """A real (if simple) segmenter: threshold at 128, 8-connected components."""
    grey = tile if tile.ndim == 2 else tile.mean(-1)
    labels, _ = ndimage.label(grey > 128, structure=np.ones((3, 3)))
    return labels


def threshold_detect(tile):
    """Same segmenter in detect() format: masks [h, w, N], score = mean brightness / 255."""
    labels = threshold_labels(tile)
    n = labels.max()
    masks = labels[..., None] == np.arange(1, n + 1)
    grey = tile if tile.ndim == 2 else tile.mean(-1)
    scores = ndimage.mean(grey, labels, np.arange(1, n + 1)) / 255.0
    return {"masks": masks, "scores": np.asarray(scores, np.float32)}


def _same_partition(a, b):
    """True if label images a and b describe the same set of instances (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]], 1), axis=0)
    return len(pairs) == len(np.unique(a[fg])) == len(np.unique(b[fg]))


def test_tile_grid_cores_partition_the_axis():
    for length, tile, ov in [(1000, 256, 64), (1000, 512, 100), (300, 512, 64), (513, 512, 64)]:
        grid = tile_grid(length, tile, ov)
        cover = np.zeros(length, int)
        for s, e, cs, ce in grid:
            assert e - s == min(tile, length) and s <= cs < ce <= e
            cover[cs:ce] += 1
            # a core keeps at least half the overlap from every interior tile edge
            if s > 0:
                assert cs - s >= ov // 2
            if e < length:
                assert e - ce >= ov // 2
        assert (cover == 1).all()
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 64, 64)


def test_nucleus_crossing_tile_borders_comes_out_once_and_whole():
    img = np.full((300, 300), 30, np.uint8)
    yy, xx = np.mgrid[:300, :300]
    grid = tile_grid(300, 128, 48)
    edge = grid[0][1]           # first tile's right edge: a cut position
    core_end = grid[0][3]       # and its core boundary
    centres = [(edge, edge), (core_end, 60), (60, core_end - 1), (150, 150)]
    truth = np.zeros((300, 300), np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 14 ** 2
        img[disc] = 220
        truth[disc] = k
    seen = []
    got = tiled_detect(lambda t: (seen.append(t.shape), threshold_labels(t))[1], img,
                       tile_size=128, overlap=48)
    assert got.max() == 4
    assert _same_partition(got, truth)
    assert set(seen) == {(128, 128)}


def test_stitched_equals_whole_image_on_monuseg_sized_image():
    img = _blob_image(1000, 450, seed=1)
    whole = threshold_labels(img)
    sizes = ndimage.find_objects(whole)
    extent = max(max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in sizes)
    overlap = 2 * extent            # components of touching discs are the "nuclei" here
    seen = []

    def detect(tile):
        seen.append(tile.shape)
        return threshold_labels(tile)

    stitched = tiled_detect(detect, img, tile_size=256, overlap=overlap)
    assert stitched.dtype == np.int32 and stitched.shape == img.shape
    assert _same_partition(stitched, whole)
    assert stitched.max() == whole.max()       # consecutive ids, no duplicates
    assert set(seen) == {(256, 256)}           # detect_fn only ever saw tile-sized inputs
    assert len(seen) > 9


def test_detect_dict_output_rgb_and_scores():
    grey = _blob_image(400, 120, seed=2)
    img = np.repeat(grey[..., None], 3, -1)
    whole = threshold_labels(grey)
    labels, scores = tiled_detect(threshold_detect, img, tile_size=160, overlap=96,
                                  return_scores=True)
    assert _same_partition(labels, whole)
    assert len(scores) == labels.max()
    # every score is the mean brightness of its own instance
    expect = ndimage.mean(grey, labels, np.arange(1, labels.max() + 1)) / 255
    assert np.allclose(scores, expect, atol=1e-5)


def test_without_enough_overlap_a_cut_nucleus_would_be_truncated():
    # shows the core rule matters: a 1-pixel overlap keeps a truncated half from the wrong tile
    img = np.full((100, 200), 30, np.uint8)
    yy, xx = np.mgrid[:100, :200]
    img[(yy - 50) ** 2 + (xx - 100) ** 2 <= 20 ** 2] = 220
    good = tiled_detect(threshold_labels, img, tile_size=120, overlap=80)
    assert good.max() == 1 and (good > 0).sum() == (img > 128).sum()
    bad = tiled_detect(threshold_labels, img, tile_size=101, overlap=1)
    assert bad.max() == 2   # the nucleus is cut in two: why overlap must exceed the diameter


def test_memmap_input_and_preallocated_output(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    img = _blob_image(600, 150, seed=3)
    path = tmp_path / "region.tif"
    tifffile.imwrite(path, img)
    mm = tifffile.memmap(path)
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.int32,
                                    shape=img.shape)
    res = tiled_detect(threshold_labels, mm, tile_size=200, overlap=100, out=out)
    assert res is out
    assert _same_partition(np.asarray(out), threshold_labels(img))


def test_bad_detect_output_is_reported():
    with pytest.raises(ValueError, match="label image"):
        tiled_detect(lambda t: np.zeros((3, 3)), np.zeros((50, 50)), tile_size=32, overlap=8)
    with pytest.raises(ValueError, match="masks"):
        tiled_detect(lambda t: {"scores": []}, np.zeros((50, 50)), tile_size=32, overlap=8)


def test_stitched_equals_whole_image_on_a_monuseg_tile(monuseg_root):
    from PIL import Image

    from mrcnn_nuclei.stain import hematoxylin_channel

    rgb = np.array(Image.open(f"{monuseg_root}/Tissue_Images/TCGA-B0-5710-01Z-00-DX1.tif"))[..., :3]

    def h_segment(tile):
        """Hematoxylin threshold + opening + connected components (a classical segmenter)."""
        fg = ndimage.binary_opening(hematoxylin_channel(tile) > 110, iterations=2)
        return ndimage.label(fg)[0]

    whole = h_segment(rgb)
    assert whole.max() > 100
    stitched = tiled_detect(h_segment, rgb, tile_size=256, overlap=96)
    assert _same_partition(stitched, whole)
    assert stitched.max() == whole.max()


def test_keep_rule_and_paste_by_hand():
    # tile at global (100, 200), core rows 100..120, cols 200..220 (global)
    masks = np.zeros((3, 30, 30), bool)
    masks[0, 2:8, 2:8] = True      # A: centroid (105, 205) in the core, score 0.5
    masks[1, 5:11, 5:11] = True    # B: centroid (108, 208) in the core, score 0.9, overlaps A
    masks[2, 22:28, 22:28] = True  # C: centroid (125, 225) outside the core
    ks, ys, xs = np.nonzero(masks)
    scores = np.array([0.5, 0.9, 0.99], np.float32)
    py, px, pr, kept = keep_in_core(ys, xs, ks, scores, (100, 200), (100, 120, 200, 220))
    assert list(kept) == [1, 0]                        # B first (better score), C dropped
    got = np.full((30, 30), -1)
    got[py, px] = pr
    assert (got[5:11, 5:11] == 0).all()                # the overlap went to B (rank 0)
    assert (got == 1).sum() == 36 - 9 and (got >= 0).sum() == 36 + 27
    assert len(set(zip(py, px))) == len(py)            # each pixel once
    # min_area drops small instances before ranking
    *_, kept = keep_in_core(ys, xs, ks, scores, (100, 200), (100, 120, 200, 220), min_area=37)
    assert len(kept) == 0
    # pasting never overwrites labelled pixels; ids consecutive in rank order from next_id
    region = np.zeros((30, 30), np.int32)
    region[5:11, 5:11] = 7                             # B's pixels already taken
    used, free = paste_kept(region, py, px, pr, next_id=8)
    assert list(used) == [1] and (region == 8).sum() == 27
    assert (region[5:11, 5:11] == 7).all() and free.sum() == 27
