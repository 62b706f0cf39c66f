"""SyntheticNucleiDataset: determinism, exact disjoint connected masks, colours, options."""

import numpy as np
import pytest
from scipy import ndimage

from mrcnn_nuclei.datasets import SyntheticNucleiDataset
from mrcnn_nuclei.datasets.synthetic import synthesize


def _make(count=6, **kw):
    ds = SyntheticNucleiDataset()
    ds.load(count, **kw)
    ds.prepare()
    return ds


def test_determinism_and_variety():
    a, b = _make(seed=4), _make(seed=4)
    c = _make(seed=5)
    for i in range(3):
        assert np.array_equal(a.load_image(i), b.load_image(i))
        assert np.array_equal(a.load_mask(i)[0], b.load_mask(i)[0])
    # re-reading an image after another one gives the same arrays (no hidden state)
    first = a.load_image(0)
    a.load_image(1)
    assert np.array_equal(a.load_image(0), first)
    assert not np.array_equal(a.load_image(0), a.load_image(1))
    assert not np.array_equal(a.load_image(0), c.load_image(0))


@pytest.mark.parametrize("colour", ["grey", "he"])
def test_masks_exact_disjoint_connected(colour):
    ds = _make(8, seed=1, colour=colour, min_nuclei=5, max_nuclei=40)
    assert ds.class_names == ["BG", "nucleus"]
    min_area = max(8, int(0.25 * np.pi * 5 * 5))
    for i in ds.image_ids:
        image = ds.load_image(i)
        masks, ids = ds.load_mask(i)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert masks.dtype == bool and masks.shape[:2] == (256, 256)
        assert ids.dtype == np.int32 and np.all(ids == 1) and len(ids) == masks.shape[2]
        assert 5 <= masks.shape[2] <= 40
        assert masks.sum(axis=2).max() <= 1, "masks overlap"
        for k in range(masks.shape[2]):
            _, n_parts = ndimage.label(masks[:, :, k])
            assert n_parts == 1, f"mask {k} of image {i} has {n_parts} parts"
            assert masks[:, :, k].sum() >= min_area
        # the image shows the masks: nuclei differ from background on average
        fg = masks.any(axis=2)
        grey = image.astype(float).mean(axis=2)
        if colour == "grey":
            assert grey[fg].mean() > grey[~fg].mean() + 40
            assert np.array_equal(image[:, :, 0], image[:, :, 2])
        else:  # H&E: dark purple nuclei (blue > green) on a lighter pink background
            assert grey[fg].mean() < grey[~fg].mean() - 40
            assert image[fg][:, 2].mean() > image[fg][:, 1].mean()
            assert image[~fg][:, 0].mean() > image[~fg][:, 1].mean()


def test_touching_nuclei_occur():
    """With overlap=True some instances share a boundary (4-neighbours of another label)."""
    touching = 0
    for i in range(4):
        _, labels = synthesize(seed=2, index=i)
        h = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
        v = (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
        touching += int(h.sum() + v.sum())
    assert touching > 0


def test_no_overlap_option_keeps_nuclei_apart():
    ds = _make(4, seed=3, overlap=False, min_nuclei=3, max_nuclei=20)
    for i in ds.image_ids:
        labels = ds.load_labels(i)
        masks, _ = ds.load_mask(i)
        assert np.array_equal(masks.argmax(axis=2) + 1, np.where(labels > 0, labels, 1))
        grown = ndimage.grey_dilation(labels, size=(3, 3))
        border = (grown != labels) & (labels > 0)
        assert not border.any(), "two nuclei touch although overlap=False"


def test_mixed_sizes_channels_and_empty_images():
    ds = _make(12, seed=0, colour="mixed", height=96, width=128, min_nuclei=0, max_nuclei=2,
               radius=(4, 6), channels=1)
    colours = {info["colour"] for info in ds.image_info}
    assert colours == {"grey", "he"}
    counts = []
    for i in ds.image_ids:
        assert ds.load_image(i).shape == (96, 128, 1)
        masks, ids = ds.load_mask(i)
        assert masks.shape[:2] == (96, 128)
        counts.append(masks.shape[2])
    assert min(counts) == 0 and max(counts) <= 2
    empty = counts.index(0)
    assert ds.load_mask(empty)[0].shape == (96, 128, 0)
    assert ds.load_mask(empty)[1].shape == (0,)


def test_bad_arguments():
    ds = SyntheticNucleiDataset()
    with pytest.raises(ValueError, match="colour"):
        ds.load(2, colour="blue")
    with pytest.raises(ValueError, match="min_nuclei"):
        ds.load(2, min_nuclei=5, max_nuclei=2)
    with pytest.raises(ValueError, match="channels"):
        ds.load(2, channels=4)
    with pytest.raises(ValueError, match="radius"):
        ds.load(2, radius=(9, 3))
