"""Learning-rate warm-up and cosine decay (Config.LEARNING_RATE_DECAY, model.LearningRateDecay):
the rate the optimizer actually reads at each step, against the closed-form schedule."""

import math

import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
import keras
from mrcnn_nuclei.config import Config, ConfigError
from mrcnn_nuclei.model import LearningRateDecay, MaskRCNN, WarmUp, cosine_factor

from test_model import TrainConfig, _synthetic


def test_cosine_factor_end_points_and_middle():
    assert cosine_factor(0.0, 0.01) == pytest.approx(1.0)
    assert cosine_factor(1.0, 0.01) == pytest.approx(0.01)
    assert cosine_factor(0.5, 0.0) == pytest.approx(0.5)
    assert cosine_factor(0.25, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_factor(-1, 0.2) == pytest.approx(1.0) and cosine_factor(3, 0.2) == pytest.approx(0.2)


def test_config_rejects_unknown_decay_and_bad_floor():
    class Linear(Config):
        LEARNING_RATE_DECAY = "linear"

    class Floor(Config):
        LEARNING_RATE_DECAY = "cosine"
        LEARNING_RATE_DECAY_FLOOR = 1.5

    with pytest.raises(ConfigError, match="LEARNING_RATE_DECAY"):
        Linear()
    with pytest.raises(ConfigError, match="LEARNING_RATE_DECAY_FLOOR"):
        Floor()
    assert Config.LEARNING_RATE_DECAY == "none"      # Matterport: constant rate


def test_decay_callback_scales_warmup_schedule():
    sched = WarmUp(0.02, warmup_steps=4)
    cb = LearningRateDecay(floor=0.1, total_steps=10, schedule=sched)
    seen = []
    for step in range(10):
        cb.on_train_batch_begin(step)
        seen.append(float(sched(step)))
        cb.on_train_batch_end(step)
    want = [0.02 * min((s + 1) / 4, 1.0) * cosine_factor(s / 10, 0.1) for s in range(10)]
    np.testing.assert_allclose(seen, want, rtol=1e-6)
    timed = LearningRateDecay(floor=0.0, progress=lambda: 0.5, schedule=sched)
    timed.on_train_batch_begin(0)
    assert float(sched(100)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="total_steps or a progress"):
        LearningRateDecay()


@pytest.mark.slow
def test_train_applies_cosine_decay_to_the_optimizer(tmp_path):
    """~40 s: one 4-step epoch; the optimizer's rate at each step follows warm-up x cosine."""

    class Cos(TrainConfig):
        STEPS_PER_EPOCH = 4
        LEARNING_RATE_WARMUP_STEPS = 2
        LEARNING_RATE_DECAY = "cosine"
        LEARNING_RATE_DECAY_FLOOR = 0.05

    rates = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate))

    model = MaskRCNN("training", Cos(), tmp_path)
    # train() puts its decay callback first, so Record sees each step's own rate
    model.train(_synthetic(2, 0), None, learning_rate=0.01, epochs=1, layers="heads",
                custom_callbacks=[Record()], verbose=0)
    want = [0.01 * min((s + 1) / 2, 1.0) * cosine_factor(s / 4, 0.05) for s in range(4)]
    assert len(rates) == 4
    np.testing.assert_allclose(rates, want, rtol=1e-5)
    assert rates[-1] < 0.6 * 0.01
