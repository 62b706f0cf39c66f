"""mrcnn_nuclei.training and mrcnn_nuclei.runs on their own: the ``loader=`` factory of
``MaskRCNN.train``, the cosine-decay wiring, layer presets and run-folder naming (no graph is
built: a stand-in Keras model records what train() hands it)."""

import os

import pytest

import mrcnn_nuclei  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
from mrcnn_nuclei import runs, training
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.model import MaskRCNN


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    STEPS_PER_EPOCH = 3
    VALIDATION_STEPS = 2
    SEED = 5


class _Recorder:
    """Stands in for the Keras training model: records compile() and fit()."""

    layers = []

    def compile(self, optimizer, jit_compile):
        self.optimizer = optimizer

    def fit(self, x, **kwargs):
        self.fit_x, self.fit_kwargs = x, kwargs
        return "history"


def _model(tmp_path, config=None):
    from mrcnn_nuclei import distribute

    m = MaskRCNN.__new__(MaskRCNN)
    m.config, m.model_dir, m.mode = config or TinyConfig(), str(tmp_path), "training"
    m.distribution = distribute.for_config(m.config)
    m.keras_model = _Recorder()
    m.set_log_dir()
    return m


def _synthetic(count):
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset

    ds = SyntheticNucleiDataset()
    ds.load(count, seed=1, height=64, width=64)
    ds.prepare()
    return ds


def test_train_builds_its_batches_with_the_given_loader(tmp_path):
    calls = []

    def loader(dataset, config, **options):
        calls.append((dataset, config, options))
        return f"loader {len(calls)}"

    m = _model(tmp_path)
    train, val = _synthetic(2), _synthetic(1)
    assert m.train(train, val, 0.01, epochs=1, layers="heads", verbose=0,
                   loader=loader) == "history"
    assert [c[1] for c in calls] == [m.config, m.config]
    assert [c[0].num_images for c in calls] == [2, 1]
    assert calls[0][2] == dict(shuffle=True, augmentation=None, workers=1,
                               use_multiprocessing=False, steps_per_epoch=3)
    assert calls[1][2]["steps_per_epoch"] == 2 and calls[1][2]["augmentation"] is None
    rec = m.keras_model
    assert rec.fit_x == "loader 1" and rec.fit_kwargs["validation_data"] == "loader 2"
    assert os.path.isdir(m.log_dir)                       # the run folder was claimed


def test_default_and_cached_loaders(tmp_path):
    from mrcnn_nuclei.data.loader import TrainingLoader
    from mrcnn_nuclei.recipes import cached_loader

    m = _model(tmp_path)
    m.train(_synthetic(2), None, 0.01, epochs=1, layers="all", verbose=0)
    plain = m.keras_model.fit_x
    assert isinstance(plain, TrainingLoader) and plain._cache is None
    assert m.keras_model.fit_kwargs["validation_data"] is None
    cached = cached_loader(_synthetic(2), TinyConfig(), shuffle=True, augmentation=None,
                           workers=2, use_multiprocessing=True, steps_per_epoch=3)
    assert isinstance(cached, TrainingLoader) and cached._cache == {}
    assert not cached._use_multiprocessing                # thread workers only (the cache)


def test_add_lr_decay_puts_one_first_or_fills_the_given_one():
    class Cosine(TinyConfig):
        LEARNING_RATE_DECAY = "cosine"
        LEARNING_RATE_DECAY_FLOOR = 0.2

    schedule = training.WarmUp(0.01, 0)
    other = object()
    out = training.add_lr_decay([other], Cosine(), 30, schedule)
    assert isinstance(out[0], training.LearningRateDecay) and out[1:] == [other]
    assert out[0].schedule is schedule and out[0].total_steps == 30 and out[0].floor == 0.2
    mine = training.LearningRateDecay(progress=lambda: 0.5)
    assert training.add_lr_decay([other, mine], Cosine(), 30, schedule) == [other, mine]
    assert mine.schedule is schedule
    assert training.add_lr_decay([other], TinyConfig(), 30, schedule) == [other]


def test_layer_regex_presets_and_errors():
    assert training.layer_regex("heads") == training.LAYER_REGEX["heads"]
    assert training.layer_regex(r"mrcnn_.*") == r"mrcnn_.*"
    with pytest.raises(ValueError, match="not a known preset .*heads, 3\\+"):
        training.layer_regex("res(")


def test_run_folder_names_claims_and_resume(tmp_path):
    import datetime

    path = runs.new_run_dir(tmp_path, "Nucleus", datetime.datetime(2026, 1, 2, 3, 4, 5))
    assert path == str(tmp_path / "nucleus20260102T030405")
    assert runs.claim_run_dir(path) == path and runs.claim_run_dir(path) == path + "_2"
    pattern = runs.checkpoint_pattern(path, "Nucleus")
    assert pattern.format(epoch=7) == os.path.join(path, "mask_rcnn_nucleus_0007.weights.h5")
    assert runs.resume_run(pattern.format(epoch=7)) == (path, 7)
    assert runs.resume_run(tmp_path / "mask_rcnn_nucleus_0003.h5") == (None, 3)  # not in a run
    assert runs.resume_run(tmp_path / "mask_rcnn_coco.h5") == (None, 0)
    assert runs.run_key("nucleus20260102T0304") == ("20260102T030400", 1, "nucleus")
    assert runs.run_key("nucleus20260102T030405_3")[1] == 3 and runs.run_key("logs") is None
