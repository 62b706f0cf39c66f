"""Leave-one-organ-out folds: every organ held out once, train/test disjoint, organ lookup."""

from pathlib import Path

import pytest

from mrcnn_nuclei.folds import leave_one_organ_out, organ_of

# the 30 MoNuSeg 2018 training tiles and their organs as published with the release
RELEASE = {
    "breast": ["A7-A13E", "A7-A13F", "AR-A1AK", "AR-A1AS", "E2-A1B5", "E2-A14V"],
    "kidney": ["B0-5711", "HE-7128", "HE-7129", "HE-7130", "B0-5710", "B0-5698"],
    "liver": ["18-5592", "38-6178", "49-4488", "50-5931", "21-5784", "21-5786"],
    "prostate": ["G9-6336", "G9-6348", "G9-6356", "G9-6363", "CH-5767", "G9-6362"],
    "bladder": ["DK-A2I6"], "colon": ["AY-A8YK", "NH-A8F7"], "stomach": ["KB-A93J", "RD-A8N9"],
}
SUFFIX = {"DK-A2I6": "-01A-01-TS1", "AY-A8YK": "-01A-01-TS1", "NH-A8F7": "-01A-01-TS1",
          "KB-A93J": "-01A-01-TS1", "RD-A8N9": "-01A-01-TS1"}


def _names():
    return [(f"TCGA-{code}{SUFFIX.get(code, '-01Z-00-DX1')}", organ)
            for organ, codes in RELEASE.items() for code in codes]


def test_table_matches_the_release_labels():
    for name, organ in _names():
        assert organ_of(name) == organ, name
    assert organ_of("TCGA-ZZ-0000") is None and organ_of("image_7") is None


def test_each_organ_held_out_once_and_disjoint():
    names = [n for n, _ in _names()]
    folds = leave_one_organ_out(names)
    assert [f[0] for f in folds] == sorted(RELEASE)
    seen_test = []
    for organ, train, test in folds:
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(names)
        assert {organ_of(n) for n in test} == {organ}
        assert organ not in {organ_of(n) for n in train}
        assert len(test) == len(RELEASE[organ])
        seen_test += test
    assert sorted(seen_test) == sorted(names)


def test_pairs_and_unknown_organs():
    folds = leave_one_organ_out([("a", "lung"), ("b", "lung"), ("c", "skin")])
    assert folds == [("lung", ["c"], ["a", "b"]), ("skin", ["a", "b"], ["c"])]
    with pytest.raises(ValueError, match="no organ known for \\['img1'\\]"):
        leave_one_organ_out(["TCGA-A7-A13E-01Z-00-DX1", "img1"])
    with pytest.raises(ValueError, match="two organs"):
        leave_one_organ_out([("a", "lung")])


class _Infos:
    """Dataset-like stand-in: image_info dicts with and without 'organ'."""

    def __init__(self, infos):
        self.image_info = infos
        self.image_ids = list(range(len(infos)))


def test_dataset_image_info_organ_wins_over_table():
    ds = _Infos([{"id": "TCGA-A7-A13E-01Z-00-DX1"},                    # breast by table
                 {"id": "TCGA-21-5784-01Z-00-DX1", "organ": "lung"},   # explicit organ wins
                 {"id": "TCGA-B0-5698-01Z-00-DX1"}])
    folds = leave_one_organ_out(ds)
    assert folds == [("breast", [1, 2], [0]), ("kidney", [0, 1], [2]), ("lung", [0, 2], [1])]


def test_shared_monuseg_files(monuseg_root):
    names = sorted(p.stem for p in (Path(monuseg_root) / "Tissue_Images").glob("*.tif"))
    folds = leave_one_organ_out(names)
    organs = [f[0] for f in folds]
    assert organs == ["breast", "colon", "kidney", "liver", "prostate"]
    assert sum(len(f[2]) for f in folds) == len(names) == 13
