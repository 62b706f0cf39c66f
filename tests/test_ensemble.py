"""Ensemble: members' detections merged by vote, detect() like a model."""

import numpy as np
import pytest

from mrcnn_nuclei.inference.ensemble import Ensemble
from test_tta import BlobDetector, _asymmetric_image, _canonical


def _graded_image():
    """Three blobs of value 160, 200, 240: thresholds 150/180/220 see 3/2/1 of them."""
    img = np.full((50, 80, 3), 30, np.uint8)
    img[5:15, 5:15] = 160
    img[20:35, 30:40] = 200
    img[10:30, 55:70] = 240
    return img


def test_vote_across_members():
    img = _graded_image()
    members = [BlobDetector(150), BlobDetector(180), BlobDetector(220)]
    ens = Ensemble(members)                      # majority: 2 of 3
    assert ens.min_runs == 2
    out = ens.detect([img, img])
    assert len(out) == 2
    assert out[0]["masks"].shape[-1] == 2         # the 160 blob is seen by one member only
    assert not out[0]["masks"][5:15, 5:15].any()
    assert out[0]["masks"][10:30, 55:70].any(-1).all()
    n_runs = dict(zip(out[0]["rois"][:, 1].tolist(), out[0]["n_runs"].tolist()))
    assert n_runs == {30: 2, 55: 3}
    # scores are the members' mean: each member scores a blob by its mean value / 255
    assert np.isclose(sorted(out[0]["scores"])[-1], 240 / 255)
    assert Ensemble(members, min_runs=1).detect([img])[0]["masks"].shape[-1] == 3
    assert Ensemble(members, min_runs=3).detect([img])[0]["masks"].shape[-1] == 1


def test_ensemble_with_tta_and_model_interface():
    img = _asymmetric_image()
    ens = Ensemble([BlobDetector(), BlobDetector(120)], tta=True, transforms=("orig", "hflip"))
    out = ens.detect_soft([img])[0]
    ref = BlobDetector().detect_soft([img])[0]
    assert _canonical(out["masks"]) == _canonical(ref["masks"])
    assert out["soft_masks"].shape == out["masks"].shape
    assert ens.config is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="models is empty"):
        Ensemble([])
    with pytest.raises(ValueError, match="min_runs"):
        Ensemble([BlobDetector()], min_runs=2)
    with pytest.raises(TypeError, match="detect"):
        Ensemble([object()])


def test_ensemble_of_real_models(tmp_path):
    from test_tta import _tiny_inference_model

    model = _tiny_inference_model(tmp_path)
    img = np.random.default_rng(1).integers(0, 255, (64, 96, 3)).astype(np.uint8)
    direct = model.detect_soft([img])[0]
    out = Ensemble([model, model]).detect([img])[0]     # a model agrees with itself
    assert out["masks"].shape[:2] == (64, 96)
    assert 0 < len(out["scores"]) <= len(direct["scores"])
    assert (out["n_runs"] == 2).all()
    # every merged instance is one of the model's own instances (same scores)
    assert set(np.round(out["scores"], 5)) <= set(np.round(direct["scores"], 5))
