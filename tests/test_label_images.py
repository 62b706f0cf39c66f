"""LabelImageDataset: pairing by stem, TIFF/PNG labels, colour labels, errors and skipping."""

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from mrcnn_nuclei.datasets import LabelImageDataset
from mrcnn_nuclei.datasets.label_images import read_label_image


def _label_map(rng, h, w, ids):
    lab = np.zeros((h, w), np.int64)
    for k in ids:
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        lab[y:y + 4, x:x + 4] = k
    return lab


def _brute_masks(lab):
    ids = sorted(set(lab.ravel().tolist()) - {0})
    out = np.zeros(lab.shape + (len(ids),), bool)
    for j, k in enumerate(ids):
        for y in range(lab.shape[0]):
            for x in range(lab.shape[1]):
                out[y, x, j] = lab[y, x] == k
    return out


@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(0)
    img_dir, lab_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    lab_dir.mkdir()
    labels = {}
    # a: PNG image + 16-bit TIFF label with large, non-consecutive ids
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(img_dir / "a.png")
    labels["a"] = _label_map(rng, 20, 24, [3, 700, 4000])
    tifffile.imwrite(lab_dir / "a_label.tif", labels["a"].astype(np.uint16))
    # b: 16-bit grey TIFF image + 8-bit PNG mask
    tifffile.imwrite(img_dir / "b.tif", rng.integers(0, 5000, (16, 18), dtype=np.uint16))
    labels["b"] = _label_map(rng, 16, 18, [1, 2])
    Image.fromarray(labels["b"].astype(np.uint8)).save(lab_dir / "b_mask.png")
    # c: same stem, no suffix, float32 TIFF with integral values
    Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(img_dir / "c.png")
    labels["c"] = _label_map(rng, 12, 12, [5])
    tifffile.imwrite(lab_dir / "c.tif", labels["c"].astype(np.float32))
    return img_dir, lab_dir, labels


def test_pairs_and_masks(folders):
    img_dir, lab_dir, labels = folders
    ds = LabelImageDataset()
    ds.load(img_dir, lab_dir)
    ds.prepare()
    assert [i["id"] for i in ds.image_info] == ["a", "b", "c"]
    assert ds.class_names == ["BG", "nucleus"]
    for i, info in enumerate(ds.image_info):
        lab = labels[info["id"]]
        masks, class_ids = ds.load_mask(i)
        assert np.array_equal(masks, _brute_masks(lab))
        assert class_ids.tolist() == [1] * masks.shape[2]
        image = ds.load_image(i)
        assert image.shape == lab.shape + (3,) and image.dtype == np.uint8
    assert ds.load_mask(0)[0].shape[2] == 3
    only_tif = LabelImageDataset().load(img_dir, lab_dir, pattern="*.tif")
    assert [i["id"] for i in only_tif.image_info] == ["b"]


def test_shared_folder_and_colour_labels(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    colour = np.zeros((10, 10, 3), np.uint8)
    colour[1:3, 1:3] = (255, 0, 0)
    colour[5:8, 5:7] = (0, 0, 9)
    colour[8:10, 0:2] = (255, 0, 0)     # same colour = same instance
    Image.fromarray(colour).save(tmp_path / "x_labels.png")
    ds = LabelImageDataset().load(tmp_path, tmp_path)
    assert [i["id"] for i in ds.image_info] == ["x"]
    masks, _ = ds.load_mask(0)
    assert masks.shape == (10, 10, 2)
    assert sorted(masks.sum(axis=(0, 1)).tolist()) == [6, 8]
    red = (colour == (255, 0, 0)).all(axis=2)
    assert any(np.array_equal(masks[:, :, j], red) for j in range(2))
    grey_rgb = np.repeat(np.array([[0, 7], [7, 0]], np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "g.png")
    assert read_label_image(tmp_path / "g.png").tolist() == [[0, 7], [7, 0]]


def test_errors_name_the_files(folders, caplog):
    img_dir, lab_dir, labels = folders
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LabelImageDataset().load(img_dir / "nowhere", lab_dir)
    # unpaired image and label
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(img_dir / "d.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(lab_dir / "e_label.png")
    with pytest.raises(ValueError, match="d.png") as err:
        LabelImageDataset().load(img_dir, lab_dir)
    assert "e_label.png" in str(err.value)
    with caplog.at_level(logging.WARNING):
        ds = LabelImageDataset().load(img_dir, lab_dir, skip_unpaired=True)
    assert [i["id"] for i in ds.image_info] == ["a", "b", "c"]
    assert "skipped 1 image(s)" in caplog.text and len(ds.skipped) == 2
    (img_dir / "d.png").unlink()
    (lab_dir / "e_label.png").unlink()
    # size mismatch
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(lab_dir / "b_mask.png")
    with pytest.raises(ValueError, match="b_mask.png"):
        LabelImageDataset().load(img_dir, lab_dir)
    # two labels for one image
    Image.fromarray(np.zeros((16, 18), np.uint8)).save(lab_dir / "b_mask.png")
    Image.fromarray(np.zeros((16, 18), np.uint8)).save(lab_dir / "b_label.png")
    with pytest.raises(ValueError, match="two label files"):
        LabelImageDataset().load(img_dir, lab_dir)
    (lab_dir / "b_label.png").unlink()
    # non-integer label values
    tifffile.imwrite(lab_dir / "c.tif", np.full((12, 12), 0.5, np.float32))
    ds = LabelImageDataset().load(img_dir, lab_dir)
    with pytest.raises(ValueError, match="c.tif"):
        ds.load_mask(2)


def test_unreadable_image_names_the_file(folders):
    img_dir, lab_dir, _ = folders
    (img_dir / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"a\.png"):
        LabelImageDataset().load(img_dir, lab_dir)
