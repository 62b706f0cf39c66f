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


# --------------------------------------------------------------------------- run scripts (smoke)
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _script(relpath):
    spec = importlib.util.spec_from_file_location(relpath.replace("/", "_")[:-3], REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("relpath", ["samples/pannuke/run.py", "samples/monuseg/run.py",
                                     "samples/unet/train.py", "samples/unet/predict.py"])
def test_scripts_help(relpath):
    out = subprocess.run([sys.executable, str(REPO / relpath), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--out" in out.stdout


def _write_pannuke_fold(root, n=4, seed=0):
    """A tiny PanNuke fold as released: images.npy (float), masks.npy [N,256,256,6], types.npy."""
    rng = np.random.default_rng(seed)
    folder = root / "Fold 3"
    (folder / "images" / "fold3").mkdir(parents=True)
    (folder / "masks" / "fold3").mkdir(parents=True)
    images = np.full((n, 256, 256, 3), 230.0)
    masks = np.zeros((n, 256, 256, 6), np.float64)
    yy, xx = np.mgrid[:256, :256]
    for i in range(n):
        nid = 1
        for cy, cx in rng.integers(20, 236, (6, 2)):
            cls = int(rng.integers(0, 5))
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 81) & (masks[i, ..., :5].sum(-1) == 0)
            masks[i, ..., cls][disc] = nid
            images[i][disc] = (80, 40, 140)
            nid += 1
    types = np.array(["Breast", "Colon", "Breast", "Colon"][:n])
    np.save(folder / "images" / "fold3" / "images.npy", images)
    np.save(folder / "masks" / "fold3" / "masks.npy", masks)
    np.save(folder / "images" / "fold3" / "types.npy", types)
    return root


class _Oracle:
    """Returns the ground truth of the image it is given (looked up by content)."""

    def __init__(self, dataset, drop_every=0):
        self.by_bytes = {dataset.load_image(i).tobytes(): dataset.load_mask(i)
                         for i in dataset.image_ids}
        self.drop_every = drop_every

    def detect(self, images):
        out = []
        for img in images:
            masks, ids = self.by_bytes[np.asarray(img).tobytes()]
            if self.drop_every:
                keep = np.arange(masks.shape[-1]) % self.drop_every != 0
                masks, ids = masks[..., keep], ids[keep]
            out.append({"masks": masks, "class_ids": ids,
                        "scores": np.ones(len(ids), np.float32),
                        "rois": np.zeros((len(ids), 4), np.int32)})
        return out


def test_pannuke_evaluation_on_a_generated_fold(tmp_path):
    from mrcnn_nuclei.datasets.pannuke import PanNukeDataset

    run = _script("samples/pannuke/run.py")
    root = _write_pannuke_fold(tmp_path / "pannuke")
    ds = PanNukeDataset().load(root, folds=[3], classes="multi")
    ds.prepare()
    summary = run.evaluate(_Oracle(ds), ds, "multi", tmp_path / "out", verbose=False)
    assert summary["images"] == 4 and summary["bPQ"] == pytest.approx(1.0)
    assert summary["mPQ"] == pytest.approx(1.0)
    assert set(summary["per_tissue"]) == {"Breast", "Colon"}
    for name in ("per_image.csv", "per_tissue.csv", "summary.json"):
        assert (tmp_path / "out" / name).exists()
    # dropping every second nucleus: PQ = DQ = TP / (TP + FN / 2) per image, SQ = 1
    worse = run.evaluate(_Oracle(ds, drop_every=2), ds, "binary", None, verbose=False)
    assert worse["bPQ"] == pytest.approx(3 / 4.5)
    assert worse["mPQ"] is None
    assert run.parse_folds("1,2:3") == ([1, 2], [3]) and run.parse_folds(":3") == ([], [3])
    with pytest.raises(SystemExit):
        run.parse_folds("1,2")


def test_monuseg_evaluation_with_an_oracle(monuseg_root):
    from mrcnn_nuclei.datasets.monuseg import MoNuSegDataset

    run = _script("samples/monuseg/run.py")
    ds = MoNuSegDataset().load(monuseg_root, names=["TCGA-B0-5710-01Z-00-DX1"])
    ds.prepare()
    rows = run.evaluate(_Oracle(ds), ds, fold="kidney", tile_size=0, verbose=False)
    assert len(rows) == 1 and rows[0]["organ"] == "kidney"
    assert rows[0]["AJI"] == pytest.approx(1.0) and rows[0]["PQ"] == pytest.approx(1.0)
    assert rows[0]["Dice"] == pytest.approx(1.0)
    summary = run.summarise(rows)
    assert summary["per_fold"]["kidney"]["images"] == 1
    assert "kidney" in run.format_table(summary)


@pytest.mark.slow
def test_pannuke_cli_evaluates_with_epochs_zero(tmp_path):
    root = _write_pannuke_fold(tmp_path / "pannuke", n=2)
    out = subprocess.run([sys.executable, str(REPO / "samples/pannuke/run.py"), "--data",
                          str(root), "--folds", ":3", "--epochs", "0", "--weights", "none",
                          "--backbone", "resnet18", "--min-confidence", "0.9",
                          "--logs", str(tmp_path / "logs"), "--out", str(tmp_path / "res")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mean over tissues" in out.stdout
    assert (tmp_path / "res" / "summary.json").exists()
