"""to_uint8 / read_image: dtype and channel rules against hand-computed values."""

import numpy as np
import pytest
from PIL import Image

from mrcnn_nuclei.data.convert import read_image, to_uint8


def test_uint8_rgb_unchanged_and_rgba_drops_alpha():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(rgb), rgb)
    alpha = np.full((5, 7, 1), 17, np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    out = to_uint8(rgba)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert np.array_equal(out, rgb)
    # all four kept only when asked for
    assert np.array_equal(to_uint8(rgba, channels=4), rgba)


@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 1)])
def test_grey_replicated_to_three_channels(shape):
    grey = np.arange(24, dtype=np.uint8).reshape(shape)
    out = to_uint8(grey)
    assert out.shape == (4, 6, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], grey.reshape(4, 6))
    one = to_uint8(grey, channels=1)
    assert one.shape == (4, 6, 1) and np.array_equal(one[:, :, 0], grey.reshape(4, 6))


def test_luminance_for_one_channel():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    out = to_uint8(rgb, channels=1)
    expected = [round(0.299 * 255), round(0.587 * 255), round(0.114 * 255),
                round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)]
    assert out.shape == (1, 4, 1)
    assert out[0, :, 0].tolist() == expected


def test_float_rules():
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert to_uint8(unit, channels=1)[0, :, 0].tolist() == [0, 128, 255]
    big = np.array([[-5.0, 100.4, 300.0, np.nan]], np.float64)
    assert to_uint8(big, channels=1)[0, :, 0].tolist() == [0, 100, 255, 0]


def test_sixteen_bit_percentile_stretch_keeps_faint_nuclei():
    rng = np.random.default_rng(1)
    img = rng.integers(100, 140, (100, 100)).astype(np.uint16)   # dim background
    img[40:50, 40:50] = 900                                      # faint nucleus (>> 8 -> 3)
    img[0, 0] = 65535                                            # one hot pixel
    lo, hi = np.percentile(img, [0.5, 99.5])
    expected = np.clip(np.rint((img.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255)
    out = to_uint8(img, channels=1)[:, :, 0]
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert out[45, 45] == 255 and out[0, 0] == 255
    assert out[45, 45] - np.median(out) > 150          # clearly visible, unlike img >> 8
    # 16-bit container holding 8-bit values is cast unchanged
    small = np.array([[0, 7, 255]], np.uint16)
    assert to_uint8(small, channels=1)[0, :, 0].tolist() == [0, 7, 255]
    # flat image -> zeros, no division by zero
    assert not to_uint8(np.full((3, 3), 4000, np.uint16)).any()


def test_bool_and_errors():
    mask = np.array([[True, False]])
    assert to_uint8(mask, channels=1)[0, :, 0].tolist() == [255, 0]
    with pytest.raises(ValueError, match="some/file.png"):
        to_uint8(np.zeros((4, 4, 3), np.uint8), channels=4, path="some/file.png")
    with pytest.raises(ValueError, match="hematoxylin"):
        to_uint8(np.zeros((4, 4), np.uint8), channels=5)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        to_uint8(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        to_uint8(np.zeros((4, 4, 3), np.uint8), channels=0)
    # multi-channel input keeps its extra channels only when asked
    stack = np.arange(4 * 4 * 5, dtype=np.uint8).reshape(4, 4, 5)
    assert np.array_equal(to_uint8(stack, channels=5), stack)
    assert np.array_equal(to_uint8(stack, channels=3), stack[:, :, :3])


def test_read_image_png_tiff_and_errors(tmp_path):
    import tifffile

    rgba = np.random.default_rng(2).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgba)
    deep = np.random.default_rng(3).integers(0, 60000, (6, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "d.tif", deep)
    got = read_image(tmp_path / "d.tif")
    assert got.dtype == np.uint16 and np.array_equal(got, deep)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(tmp_path / "broken.png")
