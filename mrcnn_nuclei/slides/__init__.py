"""Whole-slide images: streamed tiled inference on Dask with QuPath GeoJSON, a per-nucleus table
and OME-Zarr labels; resumable.  See :func:`segment_slide` and ``mrcnn-nuclei segment``.

Modules: :mod:`.reader` (slide regions at a level or mpp), :mod:`.tissue` (background tiles),
:mod:`.segmenters` (Mask R-CNN or classical, cached per worker), :mod:`.tasks` (one tile on a
worker), :mod:`.measure` (outline and measurements of a nucleus), :mod:`.outputs` (streamed
writers), :mod:`.run` (scheduling, stitching, resuming).
"""

from .run import open_client, plan_tiles, segment_slide, segment_slides

__all__ = ["segment_slide", "segment_slides", "open_client", "plan_tiles"]
