"""Whole-slide throughput on Dask: megapixels/s and nuclei/s at 1 and 2 workers.

Builds pyramidal JPEG-compressed TIFF slides (``--sizes``, e.g. 4096 and 16384 px a side) from
the MoNuSeg training tiles (../shared/data/monuseg_train) laid side by side (flipped and rotated
copies, so neighbouring tiles differ), written tile by tile so the whole slide is never in memory.
Then runs :func:`mrcnn_nuclei.slides.segment_slide` with the CPU recipe's model
(:class:`mrcnn_nuclei.recipes.DSBScratchConfig`: ResNet-18 + GN, tiles upsampled x2 as in
training) on a LocalCluster of worker PROCESSES, once per ``--workers`` value, and reports per run:

* Mpx/s (working-grid megapixels of the segmented tiles' cores per wall second) and nuclei/s;
* median time per tile spent reading, detecting (Mask R-CNN), measuring (keep rule, outlines,
  measurements; all on the worker) and writing (client: tile record, stitching, GeoJSON/CSV/zarr);
* scheduling overhead: wall time minus the workers' task time spread over the worker slots (what
  Dask, waiting for the client and the last tiles' tail cost; the client's writing overlaps the
  workers' work); the cluster start-up is separate;
* the model load (build + weights, once per worker, not in the per-tile figures but in the wall
  time, so Mpx/s of a short run is pulled down by it);
* peak resident memory of each worker process (ru_maxrss).

The model has RANDOM weights (none are trained here for the recipe's config; speed does not
depend on the weights except through the number of detections): DETECTION_MIN_CONFIDENCE is set
to ``--min-confidence`` (default 0, so every tile fills its detection slots: the heaviest load of
mask pasting and measuring).  ``--max-tiles`` segments only the first N tiles of each slide (the
16k slide has 289 tiles of 1024 px; each takes seconds on a CPU); the per-tile figures do not depend
on it, the slide-size ones (reading from a larger file, peak memory) are what the two sizes compare.

    python benchmarks/slide_speed.py                 # 4096 and 16384 px, 1 and 2 workers
    python benchmarks/slide_speed.py --max-tiles 6 --tile 512 --overlap 64   # short settings
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("MRCNN_NUCLEI_SHARED",
                             Path(__file__).resolve().parents[2] / "shared"))


class Mosaic:
    """A virtual size x size RGB slide made of 1000x1000 MoNuSeg tiles (8 flips/rotations)."""

    def __init__(self, size, root):
        from PIL import Image

        files = sorted(glob.glob(f"{root}/Tissue_Images/*.tif"))
        if not files:
            raise SystemExit(f"no MoNuSeg tiles under {root}/Tissue_Images; set "
                             "MRCNN_NUCLEI_SHARED to the shared data folder")
        self.tiles = [np.asarray(Image.open(f))[:1000, :1000, :3] for f in files]
        self.size = size

    def cell(self, cy, cx):
        k = cy * 131 + cx * 17
        img = self.tiles[k % len(self.tiles)]
        v = (k // len(self.tiles)) % 8
        img = np.rot90(img, v % 4)
        return img[:, ::-1] if v >= 4 else img

    def region(self, y0, y1, x0, x1):
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for cy in range(y0 // 1000, (y1 - 1) // 1000 + 1):
            for cx in range(x0 // 1000, (x1 - 1) // 1000 + 1):
                ys, ye = max(y0, cy * 1000), min(y1, cy * 1000 + 1000)
                xs, xe = max(x0, cx * 1000), min(x1, cx * 1000 + 1000)
                out[ys - y0:ye - y0, xs - x0:xe - x0] = \
                    self.cell(cy, cx)[ys - cy * 1000:ye - cy * 1000, xs - cx * 1000:xe - cx * 1000]
        return out


def write_slide(path, size, root, mpp=0.25, levels=3, tile=256):
    """Pyramidal JPEG TIFF of a :class:`Mosaic`, written tile by tile."""
    import tifffile

    mosaic = Mosaic(size, root)

    def tiles(step):
        n = -(-size // step)
        for y in range(0, n, tile):
            for x in range(0, n, tile):
                block = mosaic.region(y * step, min(size, (y + tile) * step),
                                      x * step, min(size, (x + tile) * step))[::step, ::step]
                pad = np.full((tile, tile, 3), 255, np.uint8)
                pad[:block.shape[0], :block.shape[1]] = block
                yield pad

    opts = dict(tile=(tile, tile), photometric="rgb", compression="jpeg",
                resolutionunit="CENTIMETER", dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles(1), shape=(size, size, 3), subifds=levels,
                  resolution=(1e4 / mpp, 1e4 / mpp), **opts)
        for k in range(1, levels + 1):
            f = 2 ** k
            n = -(-size // f)
            tif.write(tiles(f), shape=(n, n, 3), subfiletype=1,
                      resolution=(1e4 / mpp / f, 1e4 / mpp / f), **opts)


def recipe_weights(folder, min_confidence):
    """Random-weight model of the CPU recipe saved with its config beside -> weights path."""
    import mrcnn_nuclei  # noqa: F401
    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.recipes import DSBScratchConfig, config_with, inference_twin
    from mrcnn_nuclei.weights import save_weights

    config = config_with(DSBScratchConfig, DETECTION_MIN_CONFIDENCE=float(min_confidence))
    model = MaskRCNN("inference", inference_twin(config), folder)
    return save_weights(model.keras_model, os.path.join(folder, "recipe.weights.h5"), config)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--max-tiles", type=int, default=None)
    p.add_argument("--min-confidence", type=float, default=0.0)
    p.add_argument("--segmenter", choices=("maskrcnn", "classical"), default="maskrcnn")
    p.add_argument("--work", help="folder for slides and outputs (default: a temporary one)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from mrcnn_nuclei.slides import segment_slide

    work = args.work or tempfile.mkdtemp(prefix="slide_speed-")
    os.makedirs(work, exist_ok=True)
    root = SHARED / "data" / "monuseg_train"
    weights = None
    if args.segmenter == "maskrcnn":
        weights = recipe_weights(work, args.min_confidence)
    rows = []
    for size in args.sizes:
        path = os.path.join(work, f"mosaic_{size}.tif")
        if not os.path.exists(path):
            t = time.perf_counter()
            write_slide(path, size, root)
            print(f"wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        for n in args.workers:
            t = time.perf_counter()
            r = segment_slide(path, os.path.join(work, f"out_{size}_{n}"), weights=weights,
                              segmenter=args.segmenter, workers=n, threads=1, processes=True,
                              tile=args.tile, overlap=args.overlap, tissue=False,
                              max_tiles=args.max_tiles, overwrite=True, progress=False)
            s = r["summary_data"]
            s.update(size=size, workers=n, total_s=round(time.perf_counter() - t, 1))
            rows.append(s)
            m, w = s["median_tile_s"], s["mean_tile_s"]["write"]
            print(f"{size:>6} px  {n} worker(s)  {s['tiles_tissue']:>3} tiles  "
                  f"{s['mpx_per_s']:.3f} Mpx/s  {s['nuclei_per_s']:.1f} nuclei/s  median per "
                  f"tile: read {m['read']:.3f} s, detect {m['detect']:.2f} s, measure "
                  f"{m['measure']:.2f} s, write {w:.3f} s  model load {s['segmenter_load_s']} s  "
                  f"overhead {s['scheduling_overhead_s']:.1f} s of {s['wall_s']:.1f} s wall "
                  f"(cluster start {s['cluster_start_s']:.1f} s)  peak RSS MB/worker "
                  f"{sorted(s['peak_rss_mb_per_worker'].values())}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
