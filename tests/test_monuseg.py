"""MoNuSegDataset on the 13 shared tiles; the polygon rasteriser against skimage.draw.polygon."""

import logging
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from skimage.draw import polygon as sk_polygon

from mrcnn_nuclei.datasets import MoNuSegDataset
from mrcnn_nuclei.datasets.monuseg import parse_aperio_xml, polygon_pixels, rasterise_polygons

ORGANS = {  # organ labels of the MoNuSeg release for the 13 shared tiles
    "TCGA-21-5784-01Z-00-DX1": "liver", "TCGA-21-5786-01Z-00-DX1": "liver",
    "TCGA-50-5931-01Z-00-DX1": "liver", "TCGA-A7-A13E-01Z-00-DX1": "breast",
    "TCGA-AR-A1AK-01Z-00-DX1": "breast", "TCGA-AR-A1AS-01Z-00-DX1": "breast",
    "TCGA-E2-A1B5-01Z-00-DX1": "breast", "TCGA-B0-5698-01Z-00-DX1": "kidney",
    "TCGA-B0-5710-01Z-00-DX1": "kidney", "TCGA-B0-5711-01Z-00-DX1": "kidney",
    "TCGA-CH-5767-01Z-00-DX1": "prostate", "TCGA-G9-6362-01Z-00-DX1": "prostate",
    "TCGA-NH-A8F7-01A-01-TS1": "colon",
}


@pytest.fixture(scope="module")
def monuseg(monuseg_root):
    ds = MoNuSegDataset()
    ds.load(monuseg_root)
    ds.prepare()
    return ds


def test_all_tiles_instances_equal_regions_minus_degenerate(monuseg, monuseg_root):
    assert monuseg.num_images == 13
    total_regions = total_degenerate = 0
    for i in monuseg.image_ids:
        info = monuseg.image_info[i]
        xml_root = ET.parse(monuseg_root / "Annotations" / f"{info['id']}.xml").getroot()
        n_regions = len(xml_root.findall("./Annotation/Regions/Region"))
        assert info["n_regions"] == n_regions
        labels = monuseg.load_labels(i)
        n_instances = len(np.unique(labels[labels > 0]))
        assert labels.max() == n_instances            # consecutive 1..N
        assert n_instances == n_regions - len(info["degenerate"])
        for _, region_id, reason in info["degenerate"]:
            assert reason in ("vertices", "empty", "covered")
            assert xml_root.find(f"./Annotation/Regions/Region[@Id='{region_id}']") is not None
        assert info["organ"] == ORGANS[info["id"]]
        total_regions += n_regions
        total_degenerate += len(info["degenerate"])
    assert 4500 < total_regions < 5500
    assert total_degenerate < 0.02 * total_regions


def test_images_and_masks(monuseg):
    for i in monuseg.image_ids:
        image = monuseg.load_image(i)
        assert image.shape == (1000, 1000, 3) and image.dtype == np.uint8
        assert 30 < image.mean() < 250 and image.std() > 10
    i = monuseg.image_from_source_map["monuseg.TCGA-CH-5767-01Z-00-DX1"]
    masks, class_ids = monuseg.load_mask(i)
    labels = monuseg.load_labels(i)
    assert masks.shape == (1000, 1000, labels.max()) and masks.dtype == bool
    assert np.all(class_ids == 1) and class_ids.dtype == np.int32
    assert masks.sum(axis=2).max() == 1
    assert np.array_equal(np.where(masks.any(axis=2), masks.argmax(axis=2) + 1, 0), labels)
    # H&E: nuclei (hematoxylin) are darker than the rest of the tile
    image = monuseg.load_image(i).astype(float).mean(axis=2)
    assert image[labels > 0].mean() < image[labels == 0].mean() - 20


def test_rasteriser_matches_skimage_on_real_polygons(monuseg_root):
    regions = parse_aperio_xml(monuseg_root / "Annotations" / "TCGA-B0-5710-01Z-00-DX1.xml")
    polygons = [xy.astype(np.float64) for _, xy in regions]
    rows, cols, owner = polygon_pixels(polygons, (1000, 1000))
    mine = set(zip(owner.tolist(), rows.tolist(), cols.tolist()))
    theirs = set()
    for k, xy in enumerate(polygons):
        rr, cc = sk_polygon(xy[:, 1], xy[:, 0], shape=(1000, 1000))
        theirs.update(zip([k] * len(rr), rr.tolist(), cc.tolist()))
    assert len(theirs) > 100_000
    assert len(mine ^ theirs) <= 1e-5 * len(theirs)


def test_rasteriser_hand_made_cases():
    square = np.array([[1, 1], [4, 1], [4, 3], [1, 3]], float)       # (x, y), integer corners
    rr, cc = sk_polygon(square[:, 1], square[:, 0], shape=(6, 6))
    rows, cols, _ = polygon_pixels([square], (6, 6))
    assert sorted(zip(rows, cols)) == sorted(zip(rr, cc))
    assert len(rows) == 4 * 3                                         # closed boundary included
    shifted = square + [2, 0]                                         # overlaps the first one
    tiny = np.array([[0.2, 0.2], [0.6, 0.2], [0.4, 0.6]])             # no pixel centre inside
    labels, reasons = rasterise_polygons(
        [square, shifted, square.copy(), square[:2], tiny], (6, 8))
    # polygon 2 (a duplicate of 0) is drawn last over the square: 0 is covered entirely
    assert reasons == [(0, "covered"), (3, "vertices"), (4, "empty")]
    expected = np.zeros((6, 8), np.int32)
    expected[1:4, 3:7] = 2
    expected[1:4, 1:5] = 3
    assert np.array_equal(labels, expected)


def _xml(regions):
    body = "".join(
        f'<Region Id="{k + 1}"><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in verts)
        + "</Vertices></Region>" for k, verts in enumerate(regions))
    return f'<Annotations><Annotation Id="1"><Regions>{body}</Regions></Annotation></Annotations>'


def test_side_by_side_layout_unpaired_and_errors(tmp_path, caplog):
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "TCGA-B0-0001.tif")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "lonely.tif")
    (tmp_path / "TCGA-B0-0001.xml").write_text(
        _xml([[(2, 2), (8, 2), (8, 6), (2, 6)], [(10, 10), (10.5, 10)]]))
    with caplog.at_level(logging.WARNING):
        ds = MoNuSegDataset().load(tmp_path)
    ds.prepare()
    assert "1 file(s)" in caplog.text and "degenerate" in caplog.text
    info = ds.image_info[0]
    assert info["organ"] == "kidney" and info["n_regions"] == 2
    assert info["degenerate"] == [(1, "2", "vertices")]
    masks, _ = ds.load_mask(0)
    assert masks.shape == (20, 30, 1) and masks.sum() == 7 * 5
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MoNuSegDataset().load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="lonely.xml"):
        MoNuSegDataset().load(tmp_path, names=["lonely"])
    (tmp_path / "bad.tif").write_bytes(Image.open(tmp_path / "lonely.tif").tobytes()[:10])
    (tmp_path / "bad.xml").write_text(_xml([]))
    with pytest.raises(ValueError, match="bad.tif"):
        MoNuSegDataset().load(tmp_path, names=["bad"])


def test_annotation_without_regions_raises_or_is_skipped_and_empty_names(tmp_path, caplog):
    for name in ("TCGA-B0-0002", "TCGA-B0-0003"):
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / f"{name}.tif")
    (tmp_path / "TCGA-B0-0002.xml").write_text(_xml([[(2, 2), (8, 2), (8, 6), (2, 6)]]))
    (tmp_path / "TCGA-B0-0003.xml").write_text(_xml([]))            # no nucleus at all
    with pytest.raises(ValueError, match="TCGA-B0-0003.xml"):
        MoNuSegDataset().load(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = MoNuSegDataset().load(tmp_path, skip_empty=True)
    assert [i["id"] for i in ds.image_info] == ["TCGA-B0-0002"]
    assert ds.skipped == ["TCGA-B0-0003"] and "skipped 1 tile" in caplog.text
    with pytest.raises(ValueError, match="empty names list"):
        MoNuSegDataset().load(tmp_path, names=[])
