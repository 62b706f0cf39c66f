"""Whole-slide runs on Dask (mrcnn_nuclei.slides) on small pyramidal TIFFs made of MoNuSeg tiles.

One 2000x2000 slide (three MoNuSeg tiles and one blank, glass-coloured quadrant) written with
tifffile as a tiled pyramid with resolution tags; the classical segmenter (deterministic) makes
whole-image inference possible as the reference.  One module-scoped in-process LocalCluster with
two workers serves most runs (processes=False: start-up costs seconds); the memory test needs
real worker processes and starts its own.
"""

import glob
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mrcnn_nuclei.slides import plan_tiles, segment_slide
from mrcnn_nuclei.slides.segmenters import ClassicalSpec, get_segmenter

TILE, OVERLAP, MIN_AREA, MPP = 512, 96, 10, 0.25
BLANK = 236  # glass


def write_pyramid(path, img, mpp=MPP, levels=2):
    """Tiled pyramidal TIFF (SubIFD levels at /2, /4) with the resolution in pixels per cm."""
    import tifffile

    opts = dict(tile=(256, 256), photometric="rgb", compression="zlib",
                resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, subifds=levels, resolution=(1e4 / mpp, 1e4 / mpp), **opts)
        for k in range(1, levels + 1):
            f = 2 ** k
            tif.write(img[::f, ::f], subfiletype=1, resolution=(1e4 / mpp / f, 1e4 / mpp / f),
                      **opts)


def mosaic(root, ny, nx, blank=(), start=0):
    """ny x nx MoNuSeg tiles (1000x1000) side by side; cells in ``blank`` are glass."""
    files = sorted(glob.glob(f"{root}/Tissue_Images/*.tif"))
    rows, k = [], start
    for y in range(ny):
        row = []
        for x in range(nx):
            if (y, x) in blank:
                row.append(np.full((1000, 1000, 3), BLANK, np.uint8))
            else:
                row.append(np.asarray(Image.open(files[k % len(files)]))[:1000, :1000, :3])
                k += 1
        rows.append(np.concatenate(row, 1))
    return np.ascontiguousarray(np.concatenate(rows, 0))


def same_partition(a, b):
    """True if label images a and b hold the same instances (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]], 1), axis=0)
    return len(pairs) == len(np.unique(a[fg])) == len(np.unique(b[fg]))


def read_labels(path, level="0"):
    import zarr

    return np.asarray(zarr.open_group(path, mode="r")[level][:])


def outputs_equal(r1, r2):
    for key in ("geojson", "table"):
        with open(r1[key], "rb") as f1, open(r2[key], "rb") as f2:
            if f1.read() != f2.read():
                return False
    return np.array_equal(read_labels(r1["labels"]), read_labels(r2["labels"]))


@pytest.fixture(scope="module")
def slide(monuseg_root, tmp_path_factory):
    img = mosaic(monuseg_root, 2, 2, blank={(1, 1)})
    path = tmp_path_factory.mktemp("slide") / "case.tif"
    write_pyramid(path, img)
    return path, img


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def run2(slide, client, tmp_path_factory):
    """The reference run: two workers, tissue mask on."""
    out = tmp_path_factory.mktemp("run2")
    return segment_slide(slide[0], out, segmenter="classical", client=client, tile=TILE,
                         overlap=OVERLAP, min_area=MIN_AREA, progress=False)


def whole_image_labels(img):
    """The classical segmenter on the whole image, instances under MIN_AREA dropped."""
    ys, xs, ks, _, _ = get_segmenter(ClassicalSpec())(img)
    labels = np.zeros(img.shape[:2], np.int32)
    labels[ys, xs] = ks + 1
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < MIN_AREA] = 0
    return labels


def test_stitched_slide_equals_whole_image_inference(slide, run2):
    _, img = slide
    whole = whole_image_labels(img)
    got = read_labels(run2["labels"])
    assert got.shape == img.shape[:2] and got.dtype == np.int32
    assert whole.max() > 500
    # every nucleus once, whole, including the ones crossing tile borders
    assert same_partition(got, whole)
    n = len(np.unique(got)) - 1
    assert n == len(np.unique(whole)) - 1 and got.max() == n   # consecutive ids, no duplicate
    grid = plan_tiles(img.shape[:2], TILE, OVERLAP)
    cuts = sorted({v for t in grid for v in t["box"]} - {0, img.shape[0]})
    crossing = set()
    for c in cuts:  # nuclei with pixels on both sides of a tile edge
        crossing |= set(np.unique(got[:, c - 1][got[:, c - 1] == got[:, c]]))
        crossing |= set(np.unique(got[c - 1][got[c - 1] == got[c]]))
    assert len(crossing - {0}) > 20


def test_geojson_table_and_labels_agree(slide, run2):
    from shapely.geometry import shape

    labels = read_labels(run2["labels"])
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    with open(run2["geojson"]) as f:
        fc = json.load(f)
    assert fc["type"] == "FeatureCollection"
    feats = fc["features"]
    assert len(feats) == len(ids) == run2["summary_data"]["nuclei"]
    with open(run2["table"]) as f:
        header, *rows = f.read().splitlines()
    assert len(rows) == len(ids)
    cols = header.split(",")
    table = {int(r.split(",")[0]): dict(zip(cols, r.split(","))) for r in rows}
    assert sorted(table) == list(ids)
    areas = dict(zip(ids, counts))
    objs = ndimage.find_objects(labels)
    for feat in feats:
        props = feat["properties"]
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "nucleus"
        assert len(props["classification"]["color"]) == 3
        poly = shape(feat["geometry"])
        assert poly.is_valid and not poly.is_empty
        k = int(props["name"].split()[-1])
        m = props["measurements"]
        assert m["area_px"] == areas[k]
        assert m["area_um2"] == pytest.approx(areas[k] * MPP ** 2, rel=1e-3)
        # the outline is the label's boundary in slide pixels (pixel-corner coordinates)
        sl = objs[k - 1]
        minx, miny, maxx, maxy = poly.bounds
        assert abs(minx - sl[1].start) <= 0.5 and abs(maxx - sl[1].stop) <= 0.5
        assert abs(miny - sl[0].start) <= 0.5 and abs(maxy - sl[0].stop) <= 0.5
        assert poly.area == pytest.approx(areas[k], rel=0.35, abs=4)
        row = table[k]
        assert float(row["centroid_x_px"]) == pytest.approx(
            np.nonzero(labels[sl] == k)[1].mean() + sl[1].start + 0.5, abs=1e-3)
        assert float(row["centroid_x_um"]) == pytest.approx(float(row["centroid_x_px"]) * MPP,
                                                            rel=1e-4)
        assert 0 < float(row["mean_hematoxylin"]) <= 255 and row["class"] == "nucleus"


def test_ome_zarr_opens_as_multiscale_labels(slide, run2):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    node = list(Reader(parse_url(run2["labels"]))())[0]
    assert {type(s) for s in node.specs} >= {Label, Multiscales}
    shapes = [tuple(d.shape) for d in node.data]
    assert shapes[0] == slide[1].shape[:2]
    assert shapes[1:] == [((s[0] + 1) // 2, (s[1] + 1) // 2) for s in shapes[:-1]]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[MPP * 2 ** i, MPP * 2 ** i] for i in range(len(shapes))]
    top = np.asarray(node.data[1])
    assert np.array_equal(top, read_labels(run2["labels"])[::2, ::2])


def test_background_tiles_are_skipped(slide, run2, client, tmp_path):
    s = run2["summary_data"]
    grid = plan_tiles(slide[1].shape[:2], TILE, OVERLAP)
    inside_blank = [t for t in grid if t["box"][0] >= 1016 and t["box"][2] >= 1016]
    touching_tissue = [t for t in grid if t["box"][0] < 1000 or t["box"][2] < 1000]
    assert len(inside_blank) >= 2
    assert len(touching_tissue) <= s["tiles_tissue"] <= len(grid) - len(inside_blank)
    assert s["tiles_run_now"] == s["tiles_tissue"] < s["tiles_total"] == len(grid)
    full = segment_slide(slide[0], tmp_path, segmenter="classical", client=client, tile=TILE,
                         overlap=OVERLAP, min_area=MIN_AREA, tissue=False, progress=False)
    assert full["summary_data"]["tiles_run_now"] == len(grid)
    assert outputs_equal(full, run2)   # nothing was lost by skipping


def test_two_workers_equal_one(slide, run2, tmp_path):
    one = segment_slide(slide[0], tmp_path, segmenter="classical", workers=1, threads=1,
                        processes=False, tile=TILE, overlap=OVERLAP, min_area=MIN_AREA,
                        progress=False)
    assert len(run2["summary_data"]["peak_rss_mb_per_worker"]) >= 1
    assert outputs_equal(one, run2)


def test_interrupted_run_resumes_to_the_same_output(slide, run2, tmp_path):
    snapshots = []
    progress = tmp_path / "case" / "progress.json"

    def stop_after_five(done, total):
        snapshots.append(progress.read_text() if progress.exists() else None)
        if done == 5:
            raise KeyboardInterrupt

    kw = dict(segmenter="classical", workers=1, threads=1, processes=False, tile=TILE,
              overlap=OVERLAP, min_area=MIN_AREA, progress=False)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide[0], tmp_path, on_tile=stop_after_five, **kw)
    saved = sorted(os.listdir(tmp_path / "case" / "tiles"))
    assert len(saved) == 5
    # as if the run had died after pasting a tile but before journaling it: roll the journal
    # back by one tile (the label image keeps that tile's pixels)
    state = json.loads(progress.read_text())
    older = json.loads(snapshots[-2])
    assert older["assembled"] == state["assembled"] - 1 and older["next_id"] < state["next_id"]
    progress.write_text(snapshots[-2])
    labels = read_labels(tmp_path / "case" / "case.labels.ome.zarr")
    assert labels.max() == state["next_id"] - 1
    resumed = segment_slide(slide[0], tmp_path, **kw)
    assert resumed["summary_data"]["tiles_resumed"] == 5
    assert outputs_equal(resumed, run2)
    # a finished run started again returns its outputs without work
    again = segment_slide(slide[0], tmp_path, **kw)
    assert again["geojson"] == resumed["geojson"]
    with pytest.raises(ValueError, match="other arguments"):
        segment_slide(slide[0], tmp_path, **{**kw, "overlap": OVERLAP + 32})


def test_level_one_coordinates_are_full_resolution(slide, client, run2, tmp_path):
    lvl = segment_slide(slide[0], tmp_path, segmenter="classical", client=client, tile=256,
                        overlap=48, level=1, min_area=3, progress=False)
    s = lvl["summary_data"]
    assert s["downsample"] == 2.0 and s["grid"] == [1000, 1000]
    labels = read_labels(lvl["labels"])
    with open(lvl["geojson"]) as f:
        feats = json.load(f)["features"]
    assert len(feats) == len(np.unique(labels)) - 1 > 100
    xs = [x for f in feats for x, _ in f["geometry"]["coordinates"][0]]
    assert max(xs) > 1000          # would stay under 1000 in level-1 pixels
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    areas = {int(f["properties"]["name"].split()[-1]): f["properties"]["measurements"]["area_px"]
             for f in feats}
    assert all(areas[k] == 4 * c for k, c in zip(ids, counts))
    node_scale = json.load(open(os.path.join(lvl["labels"], ".zattrs")))
    assert node_scale["multiscales"][0]["datasets"][0]["coordinateTransformations"][0][
        "scale"] == [2 * MPP, 2 * MPP]


def test_cli_segment_writes_outputs(slide, tmp_path):
    from mrcnn_nuclei.cli import main

    small = tmp_path / "small.png"
    Image.fromarray(slide[1][:700, :700]).save(small)
    rc = main(["segment", str(small), "--segmenter", "classical", "--out", str(tmp_path / "o"),
               "--tile", "384", "--overlap", "96", "--workers", "1", "--quiet",
               "--no-tissue-mask", "--base-mpp", "0.5"])
    assert rc == 0
    d = tmp_path / "o" / "small"
    summary = json.loads((d / "summary.json").read_text())
    n_tiles = len(plan_tiles((700, 700), 384, 96))
    assert summary["tiles_total"] == summary["tiles_run_now"] == n_tiles == 9
    assert summary["mpp"] == 0.5
    whole = whole_image_labels(slide[1][:700, :700])
    assert same_partition(read_labels(d / "small.labels.ome.zarr"), whole)
    assert not (d / "tiles").exists()


@dataclass(frozen=True)
class DieOnceSpec(ClassicalSpec):
    """The classical segmenter, but the worker process dies (os._exit) in its third tile the
    first time (a marker file records that it happened)."""

    marker: str = ""

    @property
    def key(self):
        return ("die-once", self.marker)

    def load(self):
        seg = super().load()
        calls = []

        def segment(tile):
            calls.append(1)
            if len(calls) == 3 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
            return seg(tile)

        return segment


@pytest.fixture(scope="module")
def process_cluster():
    """One LocalCluster with a real worker PROCESS (restarted by its nanny when it dies)."""
    import cloudpickle
    from distributed import LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        yield cluster
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_worker_peak_memory_does_not_grow_with_slide_size(monuseg_root, process_cluster,
                                                          tmp_path):
    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    tissue = mosaic(monuseg_root, 1, 2)                          # 1000 x 2000
    write_pyramid(small, tissue)
    big = np.full((2000, 4000, 3), BLANK, np.uint8)              # twice the size on each side,
    big[:1000, :2000] = tissue                                   # the same tissue, more glass
    write_pyramid(large, big)
    peaks = []
    for path in (small, large):
        # by address, as `--scheduler tcp://...` does
        r = segment_slide(path, tmp_path / "out", segmenter="classical",
                          scheduler=process_cluster.scheduler_address, tile=TILE,
                          overlap=OVERLAP, progress=False)
        (peak,) = r["summary_data"]["peak_rss_mb_per_worker"].values()
        peaks.append(peak)
        assert r["summary_data"]["tiles_run_now"] == r["summary_data"]["tiles_tissue"] > 10
    # the worker's high-water mark (ru_maxrss) after the larger slide stays within 10 MB of the
    # first one's; holding the large slide's pixels once would add 18 MB more than the small's
    assert peaks[1] <= peaks[0] + 10, peaks


def test_a_worker_dying_mid_tile_loses_only_that_tile(slide, run2, process_cluster, tmp_path):
    from distributed import Client

    spec = DieOnceSpec(marker=str(tmp_path / "died"))
    with Client(process_cluster) as c:
        pids = set(c.run(os.getpid).values())
        r = segment_slide(slide[0], tmp_path, segmenter=spec, client=c, tile=TILE,
                          overlap=OVERLAP, min_area=MIN_AREA, progress=False)
        assert os.path.exists(spec.marker)                      # a worker did die
        assert set(c.run(os.getpid).values()) != pids           # and was replaced
    assert outputs_equal(r, run2)
