"""The command-line programs, as functions of the package (no clone of ``samples/`` needed).

* :mod:`.nucleus`: Matterport's nucleus ``train`` and ``detect`` (``samples/nucleus/train.py``
  and ``mrcnn-nuclei train|detect`` are thin wrappers).
* :mod:`.evaluate`: every metric on a dataset subset (``samples/nucleus/evaluate.py`` and
  ``mrcnn-nuclei evaluate``).
* :mod:`.model`: ``mrcnn-nuclei info`` and ``save-model`` (model folders).

Each module has ``add_arguments(parser)`` and ``run(args)``; :mod:`mrcnn_nuclei.cli` registers
them as sub-commands.
"""
