"""Hematoxylin channel: fixed-range rescaling, purple > pink, nuclei > background on MoNuSeg."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import hed2rgb, rgb2hed
from skimage.draw import polygon

from mrcnn_nuclei.stain import H_RANGE, hematoxylin_channel, hematoxylin_concentration


def test_two_colour_image_purple_brighter_than_pink():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (80, 40, 140)    # hematoxylin-like purple
    img[:, 20:] = (235, 160, 200)  # eosin-like pink
    h = hematoxylin_channel(img)
    assert h.shape == (20, 40) and h.dtype == np.uint8
    assert h[:, :20].min() > h[:, 20:].max() + 50
    # independent value check: rgb2hed then the documented linear map
    expect = np.clip(np.rint(max(rgb2hed(img[:1, :1])[0, 0, 0], 0) / H_RANGE[1] * 255), 0, 255)
    assert h[0, 0] == expect


def test_fixed_scale_not_per_image_stretch():
    pale = np.full((4, 4, 3), (200, 180, 220), np.uint8)
    dark = pale.copy()
    dark[0, 0] = (30, 20, 90)
    # the pale colour keeps its value whatever else is in the image
    assert hematoxylin_channel(pale)[1, 1] == hematoxylin_channel(dark)[1, 1]
    assert hematoxylin_channel(np.full((2, 2, 3), 255, np.uint8)).max() == 0


def test_pure_hematoxylin_ramp_is_monotonic_and_saturates():
    conc = np.linspace(0.0, 0.4, 41)
    hed = np.zeros((1, 41, 3))
    hed[0, :, 0] = conc
    rgb = np.clip(np.rint(hed2rgb(hed) * 255), 0, 255).astype(np.uint8)
    h = hematoxylin_channel(rgb)[0].astype(int)
    assert np.all(np.diff(h) >= 0)
    assert h[0] == 0 and h[-1] == 255
    # the concentration read back is close to the one painted (quantisation aside)
    back = hematoxylin_concentration(rgb)[0]
    assert np.allclose(back[:26], conc[:26], atol=0.02)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="uint8"):
        hematoxylin_channel(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        hematoxylin_channel(np.zeros((4, 4), np.uint8))


def _polygons(xml_path, limit):
    root = ET.parse(xml_path).getroot()
    polys = []
    for region in root.iter("Region"):
        pts = [(float(v.get("Y")), float(v.get("X"))) for v in region.iter("Vertex")]
        if len(pts) >= 3:
            polys.append(np.array(pts))
        if len(polys) >= limit:
            break
    return polys


def test_monuseg_nuclei_have_more_hematoxylin(monuseg_root):
    name = "TCGA-A7-A13E-01Z-00-DX1"
    rgb = np.array(Image.open(Path(monuseg_root) / "Tissue_Images" / f"{name}.tif"))[..., :3]
    inside = np.zeros(rgb.shape[:2], bool)
    for poly in _polygons(Path(monuseg_root) / "Annotations" / f"{name}.xml", 150):
        rr, cc = polygon(poly[:, 0], poly[:, 1], shape=inside.shape)
        inside[rr, cc] = True
    assert inside.sum() > 10000
    h = hematoxylin_channel(rgb).astype(float)
    # only compare against pixels far from any annotated nucleus region drawn
    from scipy.ndimage import binary_dilation
    outside = ~binary_dilation(inside, iterations=3)
    assert h[inside].mean() > h[outside].mean() + 15
