"""PanNukeDataset on small arrays in the exact PanNuke format (released and flat layouts)."""

import numpy as np
import pytest

from mrcnn_nuclei.datasets import PanNukeDataset
from mrcnn_nuclei.datasets.pannuke import CLASS_NAMES

H = W = 256  # the released patch size: images.npy [N, 256, 256, 3], masks.npy [N, 256, 256, 6]


def _fold_arrays(rng, n, tissues):
    images = rng.uniform(0, 255, (n, H, W, 3))            # float64 0..255 as released
    masks = np.zeros((n, H, W, 6))                         # float64 instance ids as released
    for i in range(n):
        next_id = 1
        for c in range(5):
            for _ in range(rng.integers(0, 3)):
                y, x = rng.integers(0, H - 6, 2)
                masks[i, y:y + rng.integers(2, 6), x:x + rng.integers(2, 6), c] = next_id
                next_id += int(rng.integers(1, 4))         # ids need not be consecutive
        masks[i, :, :, 5] = (masks[i, :, :, :5].sum(axis=2) == 0)
    masks[0, 1:3, 1:3, 2] = 77                            # at least one instance in image 0
    return images, masks, np.array(tissues)


@pytest.fixture()
def pannuke_root(tmp_path):
    rng = np.random.default_rng(0)
    folds = {}
    # fold 1 as released: images and types under images/fold1, masks under masks/fold1
    images, masks, types = _fold_arrays(rng, 2, ["Breast", "Colon"])
    (tmp_path / "Fold 1" / "images" / "fold1").mkdir(parents=True)
    (tmp_path / "Fold 1" / "masks" / "fold1").mkdir(parents=True)
    np.save(tmp_path / "Fold 1" / "images" / "fold1" / "images.npy", images)
    np.save(tmp_path / "Fold 1" / "images" / "fold1" / "types.npy", types)
    np.save(tmp_path / "Fold 1" / "masks" / "fold1" / "masks.npy", masks)
    folds["Fold 1"] = (images, masks, types)
    # fold 2 flat, uint8 images
    images, masks, types = _fold_arrays(rng, 2, ["Kidney", "Liver"])
    images = images.astype(np.uint8)
    (tmp_path / "fold2").mkdir()
    for name, arr in (("images", images), ("masks", masks), ("types", types)):
        np.save(tmp_path / "fold2" / f"{name}.npy", arr)
    folds["fold2"] = (images, masks, types)
    return tmp_path, folds


def _expected_instances(type_maps, multi):
    """Independent reference: loop over channels and ids, build each mask pixel by pixel."""
    masks, classes = [], []
    for c in range(5):
        for value in sorted(set(type_maps[:, :, c].ravel().tolist()) - {0.0}):
            m = np.zeros((H, W), bool)
            for y in range(H):
                for x in np.flatnonzero(type_maps[y, :, c] == value):
                    m[y, x] = True
            masks.append(m)
            classes.append(c + 1 if multi else 1)
    return masks, classes


@pytest.mark.parametrize("classes", ["binary", "multi"])
def test_instances_classes_tissues(pannuke_root, classes):
    root, folds = pannuke_root
    ds = PanNukeDataset()
    ds.load(root, classes=classes)
    ds.prepare()
    assert ds.num_images == 4
    if classes == "binary":
        assert ds.class_names == ["BG", "nucleus"]
    else:
        assert ds.class_names == ["BG", *CLASS_NAMES]
    k = 0
    for fold, (images, masks, types) in folds.items():
        for index in range(len(images)):
            info = ds.image_info[k]
            assert (info["fold"], info["index"], info["tissue"]) == (fold, index, str(types[index]))
            image = ds.load_image(k)
            assert image.shape == (H, W, 3) and image.dtype == np.uint8
            assert np.array_equal(image, np.clip(np.rint(images[index]), 0, 255).astype(np.uint8))
            got, class_ids = ds.load_mask(k)
            want, want_classes = _expected_instances(masks[index], classes == "multi")
            assert got.shape == (H, W, len(want)) and got.dtype == bool
            assert class_ids.dtype == np.int32 and class_ids.tolist() == want_classes
            for j, m in enumerate(want):
                assert np.array_equal(got[:, :, j], m)
            k += 1
    assert ds.load_mask(0)[0].shape[2] >= 1


def test_fold_selection_single_fold_root_and_errors(pannuke_root):
    root, folds = pannuke_root
    ds = PanNukeDataset().load(root, folds=[2])
    assert [i["fold"] for i in ds.image_info] == ["fold2", "fold2"]
    ds = PanNukeDataset().load(root, folds="Fold 1")
    assert [i["tissue"] for i in ds.image_info] == ["Breast", "Colon"]
    ds = PanNukeDataset().load(root / "Fold 1")                  # a fold folder as root
    assert len(ds.image_info) == 2
    with pytest.raises(FileNotFoundError, match="fold 3"):
        PanNukeDataset().load(root, folds=[3])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PanNukeDataset().load(root / "nowhere")
    with pytest.raises(ValueError, match="classes"):
        PanNukeDataset().load(root, classes="typed")
    ds = PanNukeDataset().load(root, folds=[1])
    with pytest.raises(ValueError, match="binary"):
        ds.load(root, folds=[2], classes="multi")


def test_mismatched_arrays_name_the_file(tmp_path):
    (tmp_path / "f1").mkdir()
    np.save(tmp_path / "f1" / "images.npy", np.zeros((3, 8, 8, 3), np.uint8))
    np.save(tmp_path / "f1" / "masks.npy", np.zeros((2, 8, 8, 6)))
    with pytest.raises(ValueError, match="masks.npy"):
        PanNukeDataset().load(tmp_path)
    np.save(tmp_path / "f1" / "masks.npy", np.zeros((3, 8, 8, 6)))
    np.save(tmp_path / "f1" / "types.npy", np.array(["a"]))
    with pytest.raises(ValueError, match="types.npy"):
        PanNukeDataset().load(tmp_path)


def test_arrays_are_memory_mapped(pannuke_root):
    root, _ = pannuke_root
    ds = PanNukeDataset().load(root)
    ds.load_image(0)
    assert ds._arrays and all(isinstance(a, np.memmap) for a in ds._arrays.values())
    import pickle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays == {} and np.array_equal(clone.load_image(1), ds.load_image(1))


def test_unreadable_array_names_the_file(tmp_path):
    (tmp_path / "f1").mkdir()
    (tmp_path / "f1" / "images.npy").write_bytes(b"not an npy file")
    np.save(tmp_path / "f1" / "masks.npy", np.zeros((1, 8, 8, 6)))
    with pytest.raises(ValueError, match="images.npy"):
        PanNukeDataset().load(tmp_path)
