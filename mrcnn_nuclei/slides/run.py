"""Whole-slide segmentation on Dask: plan tiles, schedule them, stitch and write as they finish.

:func:`segment_slide` (one slide) and :func:`segment_slides` (several, one cluster) run the whole
pipeline:

1. open the slide (:class:`~.reader.SlideReader`, at a level or an mpp), cut the working grid into
   overlapping tiles (:func:`mrcnn_nuclei.inference.tiling.tile_grid`: the cores partition the
   slide) and drop tiles without tissue (:mod:`.tissue`, optional);
2. submit the tiles to ``dask.distributed`` workers (a LocalCluster, or an existing scheduler by
   address); each worker loads the segmenter once (:func:`~.segmenters.get_segmenter`), reads its
   tile, keeps the instances whose centroid lies in the tile's core
   (:func:`~mrcnn_nuclei.inference.tiling.keep_in_core`) and measures them (:mod:`.tasks`);
   failed tasks are retried (``retries``) and tasks of a worker that dies are rescheduled;
3. as results arrive the client saves each (``tiles/NNNNNN.pkl``, written atomically: the
   record of finished tiles) and assembles tiles IN GRID ORDER: kept instances are pasted into
   the label image without overwriting earlier tiles
   (:func:`~mrcnn_nuclei.inference.tiling.paste_kept`), ids are consecutive, and GeoJSON features
   and table rows are appended (:mod:`.outputs`).  After each tile ``progress.json`` records the
   file lengths and the next id.

Resuming: ``run.json`` holds the arguments; a run started again with the same arguments skips
the saved tiles, truncates the GeoJSON/CSV to the recorded lengths, clears a tile pasted only in
part, and continues, so the outputs equal those of an uninterrupted run (grid order makes them
independent of the number of workers and of the order tiles finish in).  Different arguments
raise unless ``overwrite=True``.

Memory: a worker holds one tile's pixels, the segmenter's output for it (for Mask R-CNN the mask
stack tile x tile x DETECTION_MAX_INSTANCES bytes) and the model; the client holds the tile results
waiting for their turn in grid order (small: packed masks and records) and one tile window of the
label image.  Workers must see the slide (and weights) at the same path; outputs are written by
the client only.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
import uuid

import numpy as np

from ..inference.tiling import paste_kept, tile_grid
from .measure import measure_instance
from .outputs import GeoJSONWriter, LabelZarr, TableWriter, csv_to_parquet
from .reader import SlideReader
from .segmenters import class_names_for, make_spec
from .tasks import peak_rss_mb, process_tile, unpack_mask
from .tissue import tiles_with_tissue, tissue_mask

__all__ = ["segment_slide", "segment_slides", "plan_tiles", "open_client", "slide_stem"]

FORMAT_VERSION = 1


def slide_stem(path):
    """``dir/case_1.ome.tif`` -> ``case_1``."""
    name = os.path.basename(os.fspath(path))
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def plan_tiles(shape, tile, overlap):
    """Row-major tiles of a working grid [H, W]: dicts ``index``, ``box`` (y0, y1, x0, x1),
    ``core`` (cy0, cy1, cx0, cx1)."""
    out = []
    for (y0, y1, cy0, cy1) in tile_grid(shape[0], tile, overlap):
        for (x0, x1, cx0, cx1) in tile_grid(shape[1], tile, overlap):
            out.append({"index": len(out), "box": (y0, y1, x0, x1), "core": (cy0, cy1, cx0, cx1)})
    return out


def open_client(scheduler=None, workers=1, threads=1, processes=True):
    """(client, cluster): a Client of the scheduler at ``scheduler`` (cluster None), or of a new
    LocalCluster with ``workers`` processes (threads when ``processes=False``) of ``threads``
    threads each; its dashboard listens on a free port (``client.dashboard_link``)."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(n_workers=int(workers), threads_per_worker=int(threads),
                           processes=bool(processes), dashboard_address=":0")
    return Client(cluster), cluster


def _atomic_bytes(path, data):
    from ..fileio import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def _atomic_json(path, obj):
    _atomic_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _read_json(path):
    with open(path) as f:
        return json.load(f)


class _Run:
    """State of one slide's run (paths, manifest, journal, writers)."""

    def __init__(self, slide, out, spec, tile, overlap, level, mpp, base_mpp, use_tissue,
                 min_area, tolerance, overwrite, max_tiles=None):
        self.reader = SlideReader(slide, level=level, mpp=mpp, base_mpp=base_mpp)
        self.spec = spec
        self.stem = slide_stem(slide)
        self.dir = os.path.join(os.fspath(out), self.stem)
        self.tiles_dir = os.path.join(self.dir, "tiles")
        self.paths = {"geojson": os.path.join(self.dir, f"{self.stem}.geojson"),
                      "table": os.path.join(self.dir, f"{self.stem}.nuclei.csv"),
                      "labels": os.path.join(self.dir, f"{self.stem}.labels.ome.zarr"),
                      "summary": os.path.join(self.dir, "summary.json")}
        self.all_tiles = plan_tiles(self.reader.shape, tile, overlap)
        if use_tissue:
            mask, scale = tissue_mask(self.reader)
            self.todo = tiles_with_tissue(self.all_tiles, mask, scale)
        else:
            self.todo = list(self.all_tiles)
        if max_tiles is not None:  # a trial / benchmark: the first tiles with tissue only
            self.todo = self.todo[:int(max_tiles)]
        st = os.stat(self.reader.path)
        self.manifest = {
            "format": FORMAT_VERSION, "slide": self.reader.path, "slide_bytes": st.st_size,
            "slide_mtime_ns": st.st_mtime_ns, "grid": list(self.reader.shape),
            "level": self.reader.level, "downsample": self.reader.downsample,
            "base_mpp": self.reader.base_mpp, "tile": int(tile), "overlap": int(overlap),
            "tissue_mask": bool(use_tissue), "min_area": int(min_area),
            "tolerance": float(tolerance), "segmenter": spec.describe(),
            "tiles": hashlib.sha1(json.dumps([t["index"] for t in self.todo]).encode()).hexdigest()}
        self.job = {"reader": self.reader, "spec": spec, "min_area": int(min_area),
                    "tolerance": float(tolerance)}
        self._prepare(overwrite)

    # --------------------------------------------------------------------------- bookkeeping
    def _prepare(self, overwrite):
        manifest_path = os.path.join(self.dir, "run.json")
        if os.path.exists(manifest_path) and not overwrite:
            old = _read_json(manifest_path)
            if old != self.manifest:
                diff = sorted(k for k in set(old) | set(self.manifest)
                              if old.get(k) != self.manifest.get(k))
                raise ValueError(f"{self.dir} holds a run of {old.get('slide')} made with other "
                                 f"arguments (differences: {', '.join(diff)}); run again with "
                                 "the same arguments to resume it, choose another --out, or "
                                 "pass --overwrite (overwrite=True) to start again")
        elif os.path.exists(self.dir):
            if overwrite:
                shutil.rmtree(self.dir)
        os.makedirs(self.tiles_dir, exist_ok=True)
        _atomic_json(manifest_path, self.manifest)
        self.progress_path = os.path.join(self.dir, "progress.json")
        self.state = (_read_json(self.progress_path) if os.path.exists(self.progress_path)
                      else None)

    def tile_path(self, index):
        return os.path.join(self.tiles_dir, f"{index:06d}.pkl")

    def save_tile(self, result):
        _atomic_bytes(self.tile_path(result["index"]), pickle.dumps(result, protocol=5))

    def load_tile(self, index):
        with open(self.tile_path(index), "rb") as f:
            return pickle.load(f)

    # ------------------------------------------------------------------------------ assembly
    def open_writers(self, class_names):
        s = self.state
        fresh = s is None or s.get("assembled", 0) == 0
        if fresh:
            s = self.state = {"assembled": 0, "next_id": 1, "geojson_bytes": None,
                              "table_bytes": None, "n_features": 0, "finished": False}
        self.geo = GeoJSONWriter(self.paths["geojson"], class_names,
                                 resume_at=None if fresh else s["geojson_bytes"],
                                 n_features=s["n_features"])
        self.table = TableWriter(self.paths["table"],
                                 resume_at=None if fresh else s["table_bytes"])
        self.labels = LabelZarr(self.paths["labels"], self.reader.shape, create=fresh)
        if not fresh and (self.geo.n != s["n_features"]):
            raise RuntimeError(f"{self.paths['geojson']} is shorter than {self.progress_path} "
                               "records; rerun with --overwrite")
        if s["assembled"] < len(self.todo):
            # a tile may have been pasted in part before the run stopped: undo that
            self.labels.clear_from(self.todo[s["assembled"]]["box"], s["next_id"])
        self.class_names = tuple(class_names)

    def assemble(self, result):
        """Paste one tile's kept instances (grid order) and append their features/rows;
        returns the number of nuclei added."""
        y0, y1, x0, x1 = result["box"]
        insts = result["instances"]
        next_id = self.state["next_id"]
        n_new = 0
        if insts:
            region = self.labels.level0[y0:y1, x0:x1]
            ys, xs, rs = [], [], []
            for r, inst in enumerate(insts):
                iy, ix = np.nonzero(unpack_mask(*inst["mask"]))
                by0, bx0 = inst["bbox"][:2]
                ys.append(iy + by0 - y0)
                xs.append(ix + bx0 - x0)
                rs.append(np.full(len(iy), r))
            py, px, pr = np.concatenate(ys), np.concatenate(xs), np.concatenate(rs)
            used, free = paste_kept(region, py, px, pr, next_id)
            if len(used):
                self.labels.level0[y0:y1, x0:x1] = region
            full = np.bincount(pr, minlength=len(insts))
            got = np.bincount(pr[free], minlength=len(insts))
            features, rows = [], []
            for j, r in enumerate(used):
                inst, nid = insts[r], next_id + j
                rec = inst["record"]
                if got[r] < full[r]:  # lost pixels to an earlier tile: measure what is left
                    rec = self._remeasure(region, nid, (y0, x0))
                k = max(1, inst["class_id"])
                name = self.class_names[k - 1] if k <= len(self.class_names) else f"class_{k}"
                row = {**rec, "id": nid, "tile": result["index"], "class": name,
                       "class_id": k, "score": inst["score"]}
                rows.append(row)
                features.append(self.geo.feature(rec["polygon"], k, row))
            self.geo.write(features)
            self.table.write(rows)
            n_new = len(used)
        s = self.state
        s["next_id"] = next_id + n_new
        s["assembled"] += 1
        s["n_features"] = self.geo.n
        s["geojson_bytes"] = self.geo.tell()
        s["table_bytes"] = self.table.tell()
        _atomic_json(self.progress_path, s)
        return n_new

    def _remeasure(self, region, nid, origin):
        from ..stain import hematoxylin_channel

        yy, xx = np.nonzero(region == nid)
        by0, by1, bx0, bx1 = yy.min(), yy.max() + 1, xx.min(), xx.max() + 1
        mask = region[by0:by1, bx0:bx1] == nid
        gy, gx = origin[0] + by0, origin[1] + bx0
        rgb = self.reader.read(gy, gx, by1 - by0, bx1 - bx0)
        return measure_instance(mask, gy, gx, rgb, hematoxylin_channel(rgb),
                                self.reader.downsample, self.reader.base_mpp,
                                self.job["tolerance"])

    def finish(self, keep_tiles):
        self.geo.finish()
        self.geo.close()
        self.table.close()
        r = self.reader
        if r.mpp:
            scale, unit = (r.mpp, r.mpp), "micrometer"
        else:
            scale, unit = (r.downsample, r.downsample), None
        self.levels = self.labels.finish(scale=scale, unit=unit)
        parquet = csv_to_parquet(self.paths["table"])
        if parquet:
            self.paths["parquet"] = parquet
        self.state["finished"] = True
        _atomic_json(self.progress_path, self.state)
        if not keep_tiles:
            shutil.rmtree(self.tiles_dir, ignore_errors=True)

    def close(self):
        for name in ("geo", "table"):
            w = getattr(self, name, None)
            if w is not None:
                w.close()


def _summary(run, stats, wall, cluster_s, slots):
    times = stats["times"]
    n = max(1, stats["ran"])
    task_total = sum(sum(t.values()) for t in times)
    mean = {k: round(sum(t[k] for t in times) / n, 4) for k in ("read", "detect", "measure")}
    mean["write"] = round(stats["write_s"] / max(1, stats["assembled"]), 4)
    median = {k: round(float(np.median([t[k] for t in times])), 4) if times else None
              for k in ("read", "detect", "measure")}
    load = [t["load"] for t in times if t.get("load", 0) > 1e-3]
    grid_mpx = run.reader.shape[0] * run.reader.shape[1] / 1e6
    core_mpx = sum((t["core"][1] - t["core"][0]) * (t["core"][3] - t["core"][2])
                   for t in run.todo) / 1e6
    nuclei = run.state["next_id"] - 1
    return {
        "slide": run.reader.path, "grid": list(run.reader.shape),
        "downsample": run.reader.downsample, "mpp": run.reader.mpp,
        "tiles_total": len(run.all_tiles), "tiles_tissue": len(run.todo),
        "tiles_skipped_background": len(run.all_tiles) - len(run.todo),
        "tiles_run_now": stats["ran"], "tiles_resumed": len(run.todo) - stats["ran"],
        "nuclei": nuclei, "wall_s": round(wall, 3), "cluster_start_s": round(cluster_s, 3),
        "grid_mpx": round(grid_mpx, 3), "tissue_mpx": round(core_mpx, 3),
        # rates of this session's work: tiles run now (not resumed ones) per wall second
        "mpx_per_s": round(stats["core_px"] / 1e6 / wall, 4) if wall > 0 and stats["ran"]
        else None,
        "nuclei_per_s": round((nuclei - stats["nuclei_before"]) / wall, 2)
        if wall > 0 and stats["ran"] else None,
        "mean_tile_s": mean, "median_tile_s": median,
        "segmenter_load_s": [round(v, 2) for v in load],
        # wall time in which the worker slots were not doing tile work (read, load, detect,
        # measure): Dask scheduling and transfers, waiting for the client (which writes while
        # the workers compute), start-up and the tail of the last tiles
        "scheduling_overhead_s": round(max(0.0, wall - task_total / max(1, slots)), 3)
        if stats["ran"] else None,
        "client_write_s": round(stats["write_s"], 3),
        "peak_rss_mb_per_worker": {w: round(v, 1) for w, v in sorted(stats["rss"].items())},
        "client_peak_rss_mb": round(peak_rss_mb(), 1),
        "levels": [list(s) for s in getattr(run, "levels", [])],
        "outputs": {k: v for k, v in run.paths.items() if k != "summary"},
    }


def _segment_one(client, slots, run, retries, progress, on_tile, keep_tiles, cluster_s):
    from distributed import as_completed
    from tqdm.auto import tqdm

    if run.state and run.state.get("finished"):
        run.reader.close()
        summary = _read_json(run.paths["summary"]) if os.path.exists(run.paths["summary"]) else {}
        return _result_paths(run, summary)
    t0 = time.perf_counter()
    run.open_writers(class_names_for(run.spec))
    on_disk = {t["index"] for t in run.todo if os.path.exists(run.tile_path(t["index"]))}
    submit = [t for t in run.todo if t["index"] not in on_disk]
    stats = {"times": [], "ran": 0, "assembled": 0, "write_s": 0.0, "rss": {}, "core_px": 0,
             "nuclei_before": run.state["next_id"] - 1}
    cores = {t["index"]: t["core"] for t in run.todo}
    cache = {}
    token = uuid.uuid4().hex[:8]
    futures = []
    bar = tqdm(total=len(run.todo), initial=len(on_disk), unit="tile", disable=not progress,
               desc=run.stem, dynamic_ncols=True)

    def assemble_ready():
        while run.state["assembled"] < len(run.todo):
            index = run.todo[run.state["assembled"]]["index"]
            if index in cache:
                result = cache.pop(index)
            elif index in on_disk:
                result = run.load_tile(index)
                on_disk.discard(index)
            else:
                return
            tw = time.perf_counter()
            run.assemble(result)
            stats["write_s"] += time.perf_counter() - tw
            stats["assembled"] += 1
        return

    try:
        assemble_ready()
        bar.set_postfix(nuclei=run.state["next_id"] - 1)
        if submit:
            keys = [f"slide-tile-{run.stem}-{t['index']}-{token}" for t in submit]
            futures = client.map(process_tile, submit, job=run.job, key=keys, retries=retries,
                                 pure=False)
            for fut in as_completed(futures):
                result = fut.result()
                fut.release()
                tw = time.perf_counter()
                run.save_tile(result)
                stats["write_s"] += time.perf_counter() - tw
                stats["times"].append(result["times"])
                stats["ran"] += 1
                w = result["worker"]
                stats["rss"][w] = max(stats["rss"].get(w, 0.0), result["peak_rss_mb"])
                cache[result["index"]] = result
                if len(cache) > 256:  # far ahead of the grid order: keep them on disk only
                    far = max(cache)
                    cache.pop(far)
                    on_disk.add(far)
                if on_tile is not None:
                    on_tile(len(run.todo) - len(submit) + stats["ran"], len(run.todo))
                assemble_ready()
                bar.update(1)
                cy0, cy1, cx0, cx1 = cores[result["index"]]
                stats["core_px"] += (cy1 - cy0) * (cx1 - cx0)
                rate = stats["core_px"] / 1e6 / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(nuclei=run.state["next_id"] - 1, mpx_s=f"{rate:.3f}")
        assemble_ready()
        if run.state["assembled"] != len(run.todo):
            raise RuntimeError(f"{run.dir}: {len(run.todo) - run.state['assembled']} tile(s) "
                               "were not assembled")
        run.finish(keep_tiles)
    except BaseException:
        if futures:
            client.cancel([f for f in futures if not f.done()])
        run.close()
        run.reader.close()
        bar.close()
        raise
    bar.close()
    run.reader.close()
    wall = time.perf_counter() - t0
    summary = _summary(run, stats, wall, cluster_s, slots)
    _atomic_json(run.paths["summary"], summary)
    if progress:
        print(_format_summary(summary))
    return _result_paths(run, summary)


def _result_paths(run, summary):
    out = dict(run.paths)
    out["summary_data"] = summary
    out["dir"] = run.dir
    return out


def _format_summary(s):
    mean = s["mean_tile_s"]
    return (f"{s['slide']}: {s['nuclei']} nuclei, {s['tiles_tissue']}/{s['tiles_total']} tiles "
            f"with tissue ({s['tiles_resumed']} resumed), {s['wall_s']:.1f} s"
            + (f", {s['mpx_per_s']:.2f} Mpx/s, {s['nuclei_per_s']:.1f} nuclei/s"
               if s["mpx_per_s"] else "")
            + f"; per tile read {mean['read']:.3f} s, detect {mean['detect']:.3f} s, measure "
              f"{mean['measure']:.3f} s, write {mean['write']:.3f} s; outputs in "
              f"{os.path.dirname(s['outputs']['geojson'])}")


def segment_slides(slides, out, weights=None, segmenter="maskrcnn", *, scheduler=None,
                   workers=1, threads=1, processes=True, client=None, tile=1024, overlap=128,
                   level=None, mpp=None, base_mpp=None, tissue=True, min_area=10,
                   class_names=(), min_confidence=None, tolerance=0.5, retries=2,
                   progress=True, on_tile=None, overwrite=False, keep_tiles=False,
                   max_tiles=None):
    """Segment several slides on one Dask cluster; returns one dict of paths per slide (see
    :func:`segment_slide`)."""
    if isinstance(slides, (str, os.PathLike)):
        slides = [slides]
    if overlap >= tile:
        raise ValueError(f"overlap={overlap} must be smaller than tile={tile}")
    spec = make_spec(segmenter, weights, class_names, min_confidence)
    runs = [_Run(s, out, spec, tile, overlap, level, mpp, base_mpp, tissue, min_area, tolerance,
                 overwrite, max_tiles) for s in slides]
    t0 = time.perf_counter()
    own = client is None
    cluster = None
    if own:
        client, cluster = open_client(scheduler, workers, threads, processes)
    cluster_s = time.perf_counter() - t0
    slots = sum(client.nthreads().values()) or 1
    if progress:
        print(f"Dask: {len(client.nthreads())} worker(s), {slots} thread(s); dashboard "
              f"{client.dashboard_link}")
    try:
        return [_segment_one(client, slots, run, retries, progress, on_tile, keep_tiles,
                             cluster_s) for run in runs]
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()


def segment_slide(slide, out, weights=None, segmenter="maskrcnn", **kwargs):
    """Segment one whole slide; outputs go to ``out/<slide stem>/``.

    slide: pyramidal TIFF / OME-TIFF / SVS / TIFF / PNG / JPEG.  weights: Mask R-CNN weights file
    (config JSON beside) or a folder holding one; ``segmenter="classical"`` needs none.
    Keyword arguments (all optional): ``scheduler`` (address of a running Dask scheduler),
    ``workers``/``threads``/``processes`` (LocalCluster), ``client`` (an existing
    ``distributed.Client``), ``tile``/``overlap`` (working pixels; the overlap should exceed the
    largest nucleus diameter), ``level`` or ``mpp`` (and ``base_mpp`` when the file has no
    resolution), ``tissue`` (skip background tiles), ``min_area`` (working pixels),
    ``class_names``, ``min_confidence``, ``retries``, ``progress``, ``overwrite``,
    ``keep_tiles``, ``on_tile(done, total)`` (called after each finished tile), ``max_tiles``
    (segment only the first N tiles with tissue: trials and benchmarks).

    Returns a dict of paths: ``geojson``, ``table`` (CSV; ``parquet`` too with pyarrow),
    ``labels`` (OME-Zarr), ``summary`` (JSON), ``dir``, plus ``summary_data`` (the summary dict).
    """
    return segment_slides([slide], out, weights, segmenter, **kwargs)[0]
