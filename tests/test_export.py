"""COCO results JSON and label TIFFs: round trips through pycocotools and tifffile."""

import json

import numpy as np
import pytest
import tifffile
from pycocotools import mask as mu
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_nuclei import export as E

# pycocotools' decode() trips a NumPy 2 deprecation inside its Cython code; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def label_image():
    lab = np.zeros((30, 40), np.int32)
    lab[2:10, 3:9] = 4
    lab[12:20, 20:35] = 9
    lab[25:30, 0:2] = 2
    return lab


def test_coco_results_from_label_decode_and_boxes():
    lab = label_image()
    res = E.coco_results(7, lab, scores=[0.1, 0.5, 0.9])
    assert [r["score"] for r in res] == [0.1, 0.5, 0.9]  # ascending ids 2, 4, 9
    for r, v in zip(res, (2, 4, 9)):
        m = mu.decode([{"size": r["segmentation"]["size"],
                        "counts": r["segmentation"]["counts"].encode()}])[..., 0]
        np.testing.assert_array_equal(m.astype(bool), lab == v)
        ys, xs = np.nonzero(lab == v)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert r["image_id"] == 7 and r["category_id"] == 1
    json.dumps(res)  # serialisable


def test_stack_and_detection_dict_and_errors():
    lab = label_image()
    stack = np.stack([lab == v for v in (2, 4, 9)], axis=-1)
    stack[3:5, 3:5, 2] = True  # overlapping masks are allowed in COCO results
    r = {"masks": stack, "scores": np.array([0.3, 0.2, 0.1], np.float32),
         "class_ids": np.array([1, 1, 2], np.int32), "rois": np.zeros((3, 4), np.int32)}
    res = E.detections_to_coco(np.int64(3), r)
    assert [x["category_id"] for x in res] == [1, 1, 2]
    assert isinstance(res[0]["image_id"], int)
    m = mu.decode([{"size": res[2]["segmentation"]["size"],
                    "counts": res[2]["segmentation"]["counts"]}])[..., 0]
    np.testing.assert_array_equal(m.astype(bool), stack[..., 2])
    assert E.coco_results(1, np.zeros((5, 5), np.int32)) == []
    assert E.coco_results(1, np.zeros((5, 5, 0), bool)) == []
    with pytest.raises(ValueError, match="one per instance"):
        E.coco_results(1, lab, scores=[1.0])


def test_coco_json_round_trip_through_cocoeval(tmp_path):
    lab = label_image()
    path = tmp_path / "out" / "pred.json"
    E.save_coco_json(path, E.coco_results(1, lab, scores=[0.9, 0.8, 0.7]))
    dets = E.load_coco_json(path)
    coco = COCO()
    anns = [dict(a, id=i + 1, area=float(np.sum(lab == v)), iscrowd=0)
            for i, (a, v) in enumerate(zip(E.coco_results(1, lab), (2, 4, 9)))]
    coco.dataset = {"images": [{"id": 1, "height": 30, "width": 40}], "annotations": anns,
                    "categories": [{"id": 1}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


@pytest.mark.parametrize("top,dtype", [(7, np.uint16), (65535, np.uint16), (65536, np.uint32),
                                       (3_000_000, np.uint32)])
def test_label_tiff_round_trip(tmp_path, top, dtype):
    lab = label_image().astype(np.int64)
    lab[lab == 9] = top
    path = tmp_path / f"lab{top}.tif"
    E.save_label_tiff(path, lab)
    back = tifffile.imread(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, lab)
    np.testing.assert_array_equal(E.load_label_tiff(path), lab)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_label_tiff_errors(tmp_path):
    with pytest.raises(TypeError, match="integer dtype"):
        E.save_label_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint32"):
        E.label_dtype(np.array([[2 ** 33]]))
