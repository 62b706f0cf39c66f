"""Slide reading at a level or an mpp, and the tissue mask (no Dask here)."""

import numpy as np
import pytest

from mrcnn_nuclei.slides.reader import SlideReader
from mrcnn_nuclei.slides.tissue import saturation_tissue, tiles_with_tissue


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    import tifffile

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("pyr") / "p.ome.tif"
    opts = dict(tile=(128, 128), photometric="rgb", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, subifds=1, resolution=(1e4 / 0.25, 1e4 / 0.25), **opts)
        tif.write(img[::2, ::2], subfiletype=1, resolution=(1e4 / 0.5, 1e4 / 0.5), **opts)
    return path, img


def test_levels_and_mpp_choose_the_grid(pyramid):
    path, img = pyramid
    r0 = SlideReader(path)
    assert r0.shape == (600, 800) and r0.base_mpp == 0.25 and r0.downsample == 1.0
    assert np.array_equal(r0.read(10, 20, 30, 40), img[10:40, 20:60])
    r1 = SlideReader(path, level=1)
    assert r1.shape == (300, 400) and r1.mpp == 0.5
    assert np.array_equal(r1.read(5, 7, 20, 30), img[::2, ::2][5:25, 7:37])
    by_mpp = SlideReader(path, mpp=0.5)        # exactly level 1: no resampling
    assert by_mpp.level == 1 and by_mpp.shape == (300, 400)
    assert np.array_equal(by_mpp.read(5, 7, 20, 30), r1.read(5, 7, 20, 30))
    r3 = SlideReader(path, mpp=1.0)            # level 1 shrunk by 2 more
    assert r3.level == 1 and r3.downsample == 4.0 and r3.shape == (150, 200)
    got = r3.read(10, 10, 20, 20).astype(float)
    expect = img[40:120, 40:120].reshape(20, 4, 20, 4, 3).mean((1, 3))
    assert np.abs(got - expect).mean() < 25    # area-averaged, not one pixel in 16
    with pytest.raises(ValueError, match="outside"):
        r0.read(590, 0, 20, 10)
    with pytest.raises(ValueError, match="finer"):
        SlideReader(path, mpp=0.1)
    with pytest.raises(ValueError, match="level 5"):
        SlideReader(path, level=5)


def test_png_without_resolution(tmp_path):
    from PIL import Image

    img = np.zeros((50, 70, 3), np.uint8)
    img[10:20, 30:40] = (200, 10, 10)
    Image.fromarray(img).save(tmp_path / "a.png")
    r = SlideReader(tmp_path / "a.png")
    assert r.shape == (50, 70) and r.base_mpp is None and r.mpp is None
    assert np.array_equal(r.read(10, 30, 10, 10), img[10:20, 30:40])
    with pytest.raises(ValueError, match="base_mpp"):
        SlideReader(tmp_path / "a.png", mpp=0.5)
    assert SlideReader(tmp_path / "a.png", base_mpp=0.5).mpp == 0.5


def test_tissue_mask_glass_and_all_tissue():
    rng = np.random.default_rng(1)
    glass = np.clip(rng.normal(235, 4, (100, 100, 3)), 0, 255).astype(np.uint8)
    pink = np.array([200, 110, 170]) + rng.normal(0, 6, (40, 50, 3))
    img = glass.copy()
    img[30:70, 20:70] = np.clip(pink, 0, 255).astype(np.uint8)
    mask = saturation_tissue(img, margin=0)
    truth = np.zeros((100, 100), bool)
    truth[30:70, 20:70] = True
    inner = np.zeros_like(truth)
    inner[32:68, 22:68] = True
    outer = np.zeros_like(truth)
    outer[28:72, 18:72] = True
    assert mask[inner].all() and not mask[~outer].any()   # right up to 2 px at the edges
    # a slide that is all tissue stays all tissue (Otsu alone would split it)
    purple = np.clip(np.array([120, 60, 160]) + rng.normal(0, 25, (80, 80, 3)), 0, 255)
    assert saturation_tissue(purple.astype(np.uint8)).all()
    assert not saturation_tissue(glass).any()
    tiles = [{"box": (0, 20, 0, 20)}, {"box": (60, 80, 60, 80)}, {"box": (40, 60, 40, 60)}]
    kept = tiles_with_tissue(tiles, truth[::2, ::2], (2.0, 2.0))
    assert kept == [tiles[1], tiles[2]]       # the glass corner tile is skipped
