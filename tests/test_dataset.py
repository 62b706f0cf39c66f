"""Dataset base class: Matterport's registration / prepare / lookup API."""

import logging

import numpy as np
import pytest
from PIL import Image

from mrcnn_nuclei import utils
from mrcnn_nuclei.data.dataset import Dataset


def _two_source_dataset():
    ds = Dataset()
    ds.add_class("dsb", 1, "nucleus")
    ds.add_class("pannuke", 1, "neoplastic")
    ds.add_class("pannuke", 2, "inflammatory, immune")
    ds.add_class("dsb", 1, "nucleus")  # duplicate: ignored
    ds.add_image("dsb", "abc", "/x/abc.png", height=4, width=5, group="g")
    ds.add_image("pannuke", 7, "/y/7.npy")
    ds.prepare()
    return ds


def test_prepare_tables():
    ds = _two_source_dataset()
    assert ds.num_classes == 4 and list(ds.class_ids) == [0, 1, 2, 3]
    assert ds.class_names == ["BG", "nucleus", "neoplastic", "inflammatory"]
    assert ds.num_images == 2 and list(ds.image_ids) == [0, 1]
    assert ds.class_from_source_map == {".0": 0, "dsb.1": 1, "pannuke.1": 2, "pannuke.2": 3}
    assert ds.image_from_source_map == {"dsb.abc": 0, "pannuke.7": 1}
    assert sorted(ds.sources) == ["", "dsb", "pannuke"]
    assert ds.source_class_ids["dsb"] == [0, 1]
    assert ds.source_class_ids["pannuke"] == [0, 2, 3]
    assert ds.map_source_class_id("pannuke.2") == 3
    assert ds.get_source_class_id(3, "pannuke") == 2
    assert ds.image_info[0]["group"] == "g" and ds.image_info[0]["id"] == "abc"
    assert ds.source_image_link(1) == "/y/7.npy"
    assert ds.image_reference(0) == "/x/abc.png"
    with pytest.raises(ValueError, match="pannuke"):
        ds.get_source_class_id(3, "dsb")
    with pytest.raises(KeyError, match="dsb.9"):
        ds.map_source_class_id("dsb.9")
    with pytest.raises(IndexError, match="2 images"):
        ds.source_image_link(5)


def test_add_class_rejects_dot_and_load_is_abstract():
    ds = Dataset()
    with pytest.raises(ValueError, match="without '.'"):
        ds.add_class("a.b", 1, "x")
    with pytest.raises(NotImplementedError, match="add_image"):
        ds.load("anything")


def test_base_load_image_and_default_mask(tmp_path, caplog):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(grey).save(tmp_path / "g.png")
    ds = Dataset()
    ds.add_class("t", 1, "nucleus")
    ds.add_image("t", "g", str(tmp_path / "g.png"))
    ds.add_image("t", "h", str(tmp_path / "g.png"), height=9, width=11)
    ds.prepare()
    image = ds.load_image(0)
    assert image.shape == (5, 6, 3) and image.dtype == np.uint8
    assert np.array_equal(image[:, :, 2], grey)
    ds.channel_count = 1
    assert ds.load_image(0).shape == (5, 6, 1)
    with caplog.at_level(logging.WARNING):
        mask, ids = ds.load_mask(0)
    assert "load_mask" in caplog.text
    assert mask.shape == (5, 6, 0) and mask.dtype == bool
    assert ids.shape == (0,) and ids.dtype == np.int32
    assert ds.load_mask(1)[0].shape == (9, 11, 0)


def test_matterport_style_subclass_overrides_work():
    class Shapes(Dataset):
        def load_shapes(self, n):
            self.add_class("shapes", 1, "square")
            for i in range(n):
                self.add_image("shapes", i, None, size=8 + i)

        def load_image(self, image_id):
            s = self.image_info[image_id]["size"]
            return np.zeros((s, s, 3), np.uint8)

        def load_mask(self, image_id):
            s = self.image_info[image_id]["size"]
            m = np.zeros((s, s, 1), bool)
            m[2:5, 2:5, 0] = True
            return m, np.array([1], np.int32)

    ds = Shapes()
    ds.load_shapes(3)
    ds.prepare()
    assert ds.load_image(2).shape == (10, 10, 3)
    assert ds.load_mask(1)[0].sum() == 9
    assert ds.image_reference(0) == ""


def test_utils_reexports_dataset_lazily():
    assert utils.Dataset is Dataset
    assert "compute_ap" in utils.__all__ and "resize_image" in utils.__all__
    with pytest.raises(AttributeError):
        utils.not_a_name  # noqa: B018


def test_utils_matterport_names_resolve_to_their_homes():
    """Every re-exported Matterport name resolves to a callable in its home module."""
    import importlib

    for name, module_name in utils._WHERE.items():
        value = getattr(utils, name)
        assert callable(value), name
        assert value is getattr(importlib.import_module(module_name), name)
