"""Post-processing, stack/label conversions and Kaggle RLE: against loops and real DSB masks."""

import csv
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from mrcnn_nuclei import postprocess as P


def overlapping_stack():
    m = np.zeros((12, 12, 3), bool)
    m[1:7, 1:7, 0] = True    # area 36
    m[4:11, 4:11, 1] = True  # area 49, overlaps 0 on [4:7, 4:7]
    m[9:11, 0:3, 2] = True   # area 6, separate
    return m


def bf_resolve(m, key):
    """Pixel loop: each pixel to the covering instance of largest key (ties: earlier channel)."""
    out = np.zeros_like(m)
    for y in range(m.shape[0]):
        for x in range(m.shape[1]):
            best = None
            for k in range(m.shape[2]):
                if m[y, x, k] and (best is None or key[k] > key[best]):
                    best = k
            if best is not None:
                out[y, x, best] = True
    return out


@pytest.mark.parametrize("seed", range(10))
def test_resolve_overlaps_against_pixel_loop(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((16, 16, 6)) < 0.3
    scores = rng.random(6)
    np.testing.assert_array_equal(P.resolve_overlaps(m, scores), bf_resolve(m, scores))
    area = m.sum(axis=(0, 1))
    np.testing.assert_array_equal(P.resolve_overlaps(m, mode="area"), bf_resolve(m, area))
    # without scores the earlier channel wins
    np.testing.assert_array_equal(P.resolve_overlaps(m), bf_resolve(m, -np.arange(6)))
    lab = P.masks_to_label(m, scores)
    expect = bf_resolve(m, scores)
    np.testing.assert_array_equal(lab, (expect * np.arange(1, 7)).sum(axis=-1))


def test_resolve_overlaps_hand_made():
    m = overlapping_stack()
    r = P.resolve_overlaps(m, scores=[0.2, 0.9, 0.5])
    assert r[5, 5].tolist() == [False, True, False]   # higher score takes the overlap
    assert r.sum(axis=-1).max() == 1 and r.shape == m.shape
    r = P.resolve_overlaps(m, scores=[0.9, 0.2, 0.5])
    assert r[5, 5].tolist() == [True, False, False]
    r = P.resolve_overlaps(m, mode="area")
    assert r[5, 5].tolist() == [False, True, False]   # 49 > 36
    assert r[..., 0].sum() == 36 - 9
    with pytest.raises(ValueError, match="mode"):
        P.resolve_overlaps(m, mode="biggest")
    with pytest.raises(ValueError, match="scores has 2"):
        P.resolve_overlaps(m, scores=[1, 2])


def test_label_mask_round_trip():
    m = P.resolve_overlaps(overlapping_stack())
    lab = P.masks_to_label(m)
    assert lab.dtype == np.int32 and set(np.unique(lab)) == {0, 1, 2, 3}
    back, ids = P.label_to_masks(lab * 5, return_ids=True)
    np.testing.assert_array_equal(back, m)
    np.testing.assert_array_equal(ids, [5, 10, 15])
    assert P.label_to_masks(np.zeros((4, 4), int)).shape == (4, 4, 0)


def test_remove_small():
    m = overlapping_stack()
    kept, keep = P.remove_small(m, 10, return_keep=True)
    assert keep.tolist() == [True, True, False] and kept.shape[-1] == 2
    lab = np.zeros((6, 6), np.int32)
    lab[0:2, 0:2] = 3   # area 4
    lab[3:6, 3:6] = 8   # area 9
    out = P.remove_small(lab, 5)
    assert set(np.unique(out)) == {0, 8} and out.dtype == np.int32
    assert (P.remove_small(lab, 4) == lab).all()


def test_fill_holes():
    ring = np.zeros((12, 12), bool)
    ring[2:9, 2:9] = True
    ring[4:7, 4:7] = False
    m = np.stack([ring, np.roll(ring, 3, axis=0)], axis=-1)
    filled = P.fill_holes(m)
    for k in range(2):
        np.testing.assert_array_equal(filled[..., k], ndi.binary_fill_holes(m[..., k]))
    assert filled[5, 5, 0]
    # label image: only background pixels are filled; an instance inside the hole stays
    lab = ring.astype(np.int32) * 2
    lab[5, 5] = 7
    out = P.fill_holes(lab)
    assert out[5, 5] == 7 and out[4, 4] == 2 and out[0, 0] == 0
    assert (out == 2).sum() == 49 - 1


def test_rle_known_case():
    mask = np.zeros((4, 3), bool)  # column-major numbering: pixel (r, c) -> c * 4 + r + 1
    mask[1:3, 0] = True            # pixels 2, 3
    mask[3, 0] = True              # pixel 4
    mask[0, 1] = True              # pixel 5 -> contiguous with 4 in column-major order
    mask[2, 2] = True              # pixel 11
    assert P.rle_encode(mask) == "2 4 11 1"
    np.testing.assert_array_equal(P.rle_decode("2 4 11 1", (4, 3)), mask)
    assert P.rle_encode(np.zeros((3, 3), bool)) == ""
    assert not P.rle_decode("", (3, 3)).any()
    with pytest.raises(ValueError, match="pairs"):
        P.rle_decode("1 2 3", (4, 3))
    with pytest.raises(ValueError, match="1..12"):
        P.rle_decode("11 5", (4, 3))


def test_rle_round_trip_on_real_dsb_masks(dsb_root):
    root = dsb_root / "stage1_train"
    ids = sorted(p.name for p in root.iterdir())[:4]
    n_checked = 0
    for image_id in ids:
        mask_files = sorted((root / image_id / "masks").glob("*.png"))[:15]
        label = None
        for k, f in enumerate(mask_files):
            m = np.array(Image.open(f)) > 0
            assert P.rle_decode(P.rle_encode(m), m.shape).tolist() == m.tolist()
            label = np.zeros(m.shape, np.int32) if label is None else label
            label[m] = k + 1
            n_checked += 1
        # per-instance rows from the label image decode back to the label
        rows = P.submission_rows(image_id, label)
        rebuilt = np.zeros_like(label)
        for k, (_, rle) in enumerate(rows):
            rebuilt[P.rle_decode(rle, label.shape)] = k + 1
        np.testing.assert_array_equal(P.label_to_masks(rebuilt), P.label_to_masks(label))
    assert n_checked >= 20


def test_label_rle_counts_match_pycocotools():
    from pycocotools import mask as mu

    rng = np.random.default_rng(1)
    lab = rng.integers(0, 5, (9, 7)) * 3
    counts, ids = P.label_rle_counts(lab)
    assert ids.tolist() == [3, 6, 9, 12]
    for c, v in zip(counts, ids):
        expect = mu.encode(np.asfortranarray((lab == v).astype(np.uint8)))
        got = mu.frPyObjects({"size": [9, 7], "counts": c}, 9, 7)
        assert got["counts"] == expect["counts"]
        assert sum(c) == lab.size
    assert P.label_rle_counts(np.ones((2, 2), int))[0] == [[0, 4]]


def test_write_submission_csv(tmp_path):
    lab = np.zeros((5, 5), np.int32)
    lab[0:2, 0] = 1
    lab[4, 4] = 2
    path = tmp_path / "sub" / "submission.csv"
    P.write_submission_csv(path, [("a", lab), ("b", np.zeros((5, 5), np.int32)), ("c", "3 2")])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["ImageId", "EncodedPixels"], ["a", "1 2"], ["a", "25 1"], ["b", ""],
                    ["c", "3 2"]]
    assert [p for p in os.listdir(path.parent) if p.endswith(".tmp")] == []
    with pytest.raises(ValueError, match="image_id"):
        P.write_submission_csv(path, [("a", "1 2", "extra")])


def test_bad_stack_input():
    with pytest.raises(TypeError, match="0/1"):
        P.resolve_overlaps(np.full((4, 4, 2), 0.7))
    with pytest.raises(ValueError, match=r"\[H, W, N\]"):
        P.resolve_overlaps(np.zeros((4, 4), bool))
