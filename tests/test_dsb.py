"""DSBDataset on the shared DSB2018 folder, its run-length path, and bad input on fake trees."""

import csv
import logging

import numpy as np
import pytest
from PIL import Image

from mrcnn_nuclei.datasets import DSBDataset
from mrcnn_nuclei.datasets.dsb import rle_decode

# id -> (group, n_masks), as listed in image_groups.tsv
KNOWN = {
    "c901794d1a421d52e5734500c0a2a8ca84651fb93b19cec2f411855e70cae339": ("1040x1388_gray", 14),
    "72e8c49dea44787114fd191f9e97e260f961c6e7ae4715bc95cc91db8d91a4e3": ("256x256_gray", 26),
    "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e": ("256x320_color", 70),
    "02903040e19ddf92f452907644ad3822918f54af41dd85e5a3fe3e1b6d6f9339": ("360x360_gray", 22),
    "0402a81e75262469925ea893b6706183832e85324f7b1e08e634129f5d522cdd": ("260x347_gray", 125),
}
OVERLAP_ID = "72e8c49dea44787114fd191f9e97e260f961c6e7ae4715bc95cc91db8d91a4e3"


@pytest.fixture(scope="module")
def dsb(dsb_root):
    ds = DSBDataset()
    ds.load(dsb_root)
    ds.prepare()
    return ds


def _rle_encode_loop(mask):
    """Independent brute-force encoder: column-major, 1-based 'start length' pairs."""
    height = mask.shape[0]
    columns = [x for x in range(mask.shape[1]) if mask[:, x].any()]  # skip empty columns
    runs, start, previous = [], None, None
    for x in columns:
        for y in range(height):
            number = x * height + y           # 0-based column-major pixel number
            if start is not None and number != previous + 1:
                runs += [start + 1, previous - start + 1]    # run ended before skipped columns
                start = None
            if mask[y, x] and start is None:
                start = number
            elif not mask[y, x] and start is not None:
                runs += [start + 1, number - start]
                start = None
            previous = number
    if start is not None:
        runs += [start + 1, previous - start + 1]
    return " ".join(map(str, runs))


def test_loads_all_images_with_groups(dsb, dsb_root):
    assert dsb.num_images == 664
    assert dsb.class_names == ["BG", "nucleus"]
    with open(dsb_root / "image_groups.tsv", newline="") as f:
        table = {r["image_id"]: (r["group"], int(r["n_masks"]))
                 for r in csv.DictReader(f, delimiter="\t")}
    for image_id, (group, n) in KNOWN.items():
        assert table[image_id] == (group, n)
        i = dsb.image_from_source_map[f"nucleus.{image_id}"]
        assert dsb.image_info[i]["group"] == group
        h, w = (int(v) for v in group.split("_")[0].split("x"))
        masks, class_ids = dsb.load_mask(i)
        assert len(class_ids) == n and masks.shape == (h, w, n) and masks.dtype == bool
        assert class_ids.dtype == np.int32 and np.all(class_ids == 1)
        assert masks.reshape(-1, n).any(axis=0).all(), "an empty mask"
        image = dsb.load_image(i)
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        # RGBA source: RGB kept, alpha dropped
        rgba = np.asarray(Image.open(dsb.image_info[i]["path"]))
        assert np.array_equal(image, rgba[:, :, :3])


def test_overlapping_masks_kept_as_given(dsb):
    i = dsb.image_from_source_map[f"nucleus.{OVERLAP_ID}"]
    masks, _ = dsb.load_mask(i)
    overlap = masks.sum(axis=2) > 1
    assert 0 < overlap.sum() < 20


def test_subsets(dsb_root):
    val = DSBDataset().load(dsb_root, subset="val")
    train = DSBDataset().load(dsb_root / "stage1_train", subset="train")  # root = stage1_train
    val_ids = {i["id"] for i in val.image_info}
    train_ids = {i["id"] for i in train.image_info}
    assert len(val_ids) == 68 and len(train_ids) == 596
    assert not val_ids & train_ids
    listed = {l.strip() for l in (dsb_root / "val_ids.txt").read_text().split() if l.strip()}
    assert val_ids == listed
    by_file = DSBDataset().load(dsb_root, ids=dsb_root / "val_ids.txt")
    assert [i["id"] for i in by_file.image_info] == (dsb_root / "val_ids.txt").read_text().split()


def test_rle_decode_hand_made():
    # 3x4 image, column-major numbering 1..12: pixel (y, x) has number x*3 + y + 1
    m = rle_decode("2 2 7 1 10 3", (3, 4))
    expected = np.zeros((3, 4), bool)
    expected[1:3, 0] = True      # 2, 3
    expected[0, 2] = True        # 7
    expected[:, 3] = True        # 10, 11, 12
    assert np.array_equal(m, expected)
    assert not rle_decode("", (3, 4)).any()
    with pytest.raises(ValueError, match="odd"):
        rle_decode("1 2 3", (3, 4))
    with pytest.raises(ValueError, match="outside"):
        rle_decode("11 3", (3, 4))


def test_solution_csv_matches_png_masks(dsb, dsb_root, tmp_path):
    chosen = [OVERLAP_ID, "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e"]
    expected = {}
    rows = []
    for k, image_id in enumerate(chosen):
        masks, _ = dsb.load_mask(dsb.image_from_source_map[f"nucleus.{image_id}"])
        expected[image_id] = masks
        for j in range(masks.shape[2]):
            rle = _rle_encode_loop(masks[:, :, j])
            # the second image carries Height/Width columns, the first leaves them empty
            shape = (masks.shape[0], masks.shape[1]) if k == 1 else ("", "")
            rows.append([image_id, rle, *shape])
    path = tmp_path / "solution.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width"])
        writer.writerows(rows)
    ds = DSBDataset()
    ds.load(dsb_root, ids=chosen, solution_csv=path)
    ds.prepare()
    for i, image_id in enumerate(chosen):
        masks, class_ids = ds.load_mask(i)
        assert np.array_equal(masks, expected[image_id])
        assert len(class_ids) == expected[image_id].shape[2]


# ---------------------------------------------------------------- bad input on fake trees
def _fake_tree(root, ids=("a1", "b2"), size=(8, 10)):
    for image_id in ids:
        (root / "stage1_train" / image_id / "images").mkdir(parents=True)
        (root / "stage1_train" / image_id / "masks").mkdir()
        Image.fromarray(np.full((*size, 4), 200, np.uint8), "RGBA").save(
            root / "stage1_train" / image_id / "images" / f"{image_id}.png")
        m = np.zeros(size, np.uint8)
        m[2:5, 3:6] = 255
        Image.fromarray(m).save(root / "stage1_train" / image_id / "masks" / "m0.png")
    return root


def test_fake_tree_loads(tmp_path):
    root = _fake_tree(tmp_path)
    ds = DSBDataset().load(root)
    ds.prepare()
    masks, ids = ds.load_mask(1)
    assert masks.shape == (8, 10, 1) and masks.sum() == 9
    assert ds.image_info[0]["group"] is None


def test_missing_root_and_id_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DSBDataset().load(tmp_path / "nowhere")
    root = _fake_tree(tmp_path)
    with pytest.raises(ValueError, match="ids= names 1 id.*zz9"):
        DSBDataset().load(root, ids=["a1", "zz9"])


def test_empty_id_list(tmp_path):
    root = _fake_tree(tmp_path)
    id_file = tmp_path / "ids_empty.txt"
    id_file.write_text("\n\n")
    with pytest.raises(ValueError, match="ids_empty.txt"):
        DSBDataset().load(root, ids=id_file)
    with pytest.raises(ValueError, match="empty id list"):
        DSBDataset().load(root, ids=[])
    with pytest.raises(FileNotFoundError, match="val_ids.txt"):
        DSBDataset().load(root, subset="val")


def test_mask_of_wrong_size_names_the_file(tmp_path):
    root = _fake_tree(tmp_path)
    bad = root / "stage1_train" / "b2" / "masks" / "wrong.png"
    Image.fromarray(np.zeros((7, 10), np.uint8)).save(bad)
    ds = DSBDataset().load(root)
    ds.prepare()
    ds.load_mask(0)
    with pytest.raises(ValueError, match="wrong.png"):
        ds.load_mask(1)


def test_unreadable_mask_names_the_file(tmp_path):
    root = _fake_tree(tmp_path)
    (root / "stage1_train" / "a1" / "masks" / "broken.png").write_bytes(b"not a png")
    ds = DSBDataset().load(root)
    with pytest.raises(ValueError, match="broken.png"):
        ds.load_mask(0)


def test_image_without_masks_raises_or_skips(tmp_path, caplog):
    root = _fake_tree(tmp_path, ids=("a1", "b2", "c3"))
    for f in (root / "stage1_train" / "b2" / "masks").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="b2"):
        DSBDataset().load(root)
    with caplog.at_level(logging.WARNING):
        ds = DSBDataset().load(root, skip_empty=True)
    assert [i["id"] for i in ds.image_info] == ["a1", "c3"]
    assert "skipped 1" in caplog.text


def test_test_set_without_masks_and_load_nucleus(tmp_path):
    root = _fake_tree(tmp_path, ids=("a1", "b2"))
    test_dir = root / "stage1_test" / "t9" / "images"
    test_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(test_dir / "t9.png")
    ds = DSBDataset().load_nucleus(root, "stage1_test")
    ds.prepare()
    assert [i["id"] for i in ds.image_info] == ["t9"]
    masks, ids = ds.load_mask(0)
    assert masks.shape == (6, 7, 0) and ids.shape == (0,)
    assert ds.load_image(0).shape == (6, 7, 3)
    assert len(DSBDataset().load_nucleus(root, "stage1_train").image_info) == 2
    with pytest.raises(FileNotFoundError, match="stage2_test"):
        DSBDataset().load_nucleus(root, "stage2_test")


def test_unreadable_image_names_the_file(tmp_path):
    root = _fake_tree(tmp_path)
    (root / "stage1_train" / "b2" / "images" / "b2.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="b2.png"):
        DSBDataset().load(root)


def test_id_files_naming_absent_ids_are_errors(tmp_path):
    root = _fake_tree(tmp_path)
    (root / "val_ids.txt").write_text("b2\nzz9\nqq7\n")   # zz9, qq7 are not in stage1_train
    with pytest.raises(ValueError, match=r"val_ids.txt names 2 id\(s\).*zz9, qq7"):
        DSBDataset().load(root, subset="val")
    with pytest.raises(ValueError, match=r"val_ids.txt names 2 id"):
        DSBDataset().load(root, subset="train")          # the train split is checked as well
    ids = tmp_path / "mine.txt"
    ids.write_text("a1\nnope\n")
    with pytest.raises(ValueError, match=r"mine.txt names 1 id\(s\).*nope"):
        DSBDataset().load(root, ids=str(ids))
    (root / "val_ids.txt").write_text("b2\n")
    assert [i["id"] for i in DSBDataset().load(root, subset="val").image_info] == ["b2"]


def test_label_image_id_list_naming_absent_ids_is_an_error(tmp_path):
    from mrcnn_nuclei.datasets.label_images import LabelImageDataset

    for stem in ("s1", "s2", "s3"):
        Image.fromarray(np.full((6, 7, 3), 90, np.uint8)).save(tmp_path / f"{stem}.png")
        lab = np.zeros((6, 7), np.uint16)
        lab[1:3, 1:3] = 1
        Image.fromarray(lab).save(tmp_path / f"{stem}_label.png")
    ds = LabelImageDataset().load(tmp_path, tmp_path, ids=["s3", "s1"])
    assert sorted(i["id"] for i in ds.image_info) == ["s1", "s3"]
    with pytest.raises(ValueError, match=r"ids= names 1 id\(s\).*s9"):
        LabelImageDataset().load(tmp_path, tmp_path, ids=["s1", "s9"])


def test_empty_masks_folder_is_an_image_without_nuclei_with_keep_empty(tmp_path):
    root = _fake_tree(tmp_path, ids=("a1", "e0"))
    for f in (root / "stage1_train" / "e0" / "masks").iterdir():
        f.unlink()                                        # e0: a masks/ folder, no nucleus
    with pytest.raises(ValueError, match="keep_empty=True"):
        DSBDataset().load(root)
    ds = DSBDataset().load(root, keep_empty=True)
    ds.prepare()
    masks, class_ids = ds.load_mask(1)
    assert ds.image_info[1]["id"] == "e0"
    assert masks.shape == (8, 10, 0) and masks.dtype == bool and class_ids.shape == (0,)
    (root / "stage1_train" / "e0" / "masks").rmdir()    # no masks/ folder: no ground truth
    with pytest.raises(ValueError, match="no mask PNGs"):
        DSBDataset().load(root, keep_empty=True)
