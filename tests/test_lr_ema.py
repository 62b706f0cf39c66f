"""Learning-rate step drop (LEARNING_RATE_DECAY = "step") and the weight average (WEIGHTS_EMA)."""

import keras
import numpy as np
import pytest

from mrcnn_nuclei.config import Config, ConfigError
from mrcnn_nuclei.recipes import config_with
from mrcnn_nuclei.training import (LearningRateDecay, WarmUp, averaged_weights, decay_callback,
                                   make_optimizer, step_factor)


class _C(Config):
    NAME = "lr_ema"
    NUM_CLASSES = 2
    LEARNING_RATE_WARMUP_STEPS = 0
    WEIGHT_DECAY = 0.0
    GRADIENT_CLIP_NORM = None


def test_step_factor_and_callback_drop_at_the_fraction():
    assert [step_factor(p, 0.1, 0.75) for p in (0.0, 0.5, 0.749, 0.75, 1.0)] == \
        [1.0, 1.0, 1.0, 0.1, 0.1]
    cfg = config_with(_C, LEARNING_RATE_DECAY="step", LEARNING_RATE_DECAY_FLOOR=0.1,
                      LEARNING_RATE_DROP_AT=0.5)
    schedule = WarmUp(0.02, 0)
    cb = decay_callback(cfg, total_steps=4)
    cb.schedule = schedule
    rates = []
    for step in range(4):
        cb.on_train_batch_begin(step)
        rates.append(float(schedule(step)))
        cb.on_train_batch_end(step)
    np.testing.assert_allclose(rates, [0.02, 0.02, 0.002, 0.002], rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        LearningRateDecay(0.1, total_steps=3, kind="linear")


def test_config_rejects_bad_schedule_and_average_values():
    for attrs, name in [({"LEARNING_RATE_DECAY": "exp"}, "LEARNING_RATE_DECAY"),
                        ({"LEARNING_RATE_DROP_AT": 1.5}, "LEARNING_RATE_DROP_AT"),
                        ({"WEIGHTS_EMA": 1.0}, "WEIGHTS_EMA")]:
        with pytest.raises(ConfigError, match=name):
            config_with(_C, **attrs)


def _ema_model(seed):
    """A seeded Dense model compiled with a WEIGHTS_EMA = 0.5 optimizer, and its data."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt, _ = make_optimizer(config_with(_C, WEIGHTS_EMA=0.5), 0.1, 0.0)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(seed).normal(size=(8, 3)).astype("float32")
    return model, x, np.ones((8, 2), "float32")


def test_weight_average_is_the_hand_computed_ema_and_raw_weights_come_back():
    model, x, y = _ema_model(0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append([v.numpy().copy() for v in model.trainable_variables])

    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
    assert len(seen) == 4
    # Keras' average: the first step copies the weights, then avg = 0.5 avg + 0.5 w
    expected = [w.copy() for w in seen[0]]
    for ws in seen[1:]:
        expected = [0.5 * e + 0.5 * w for e, w in zip(expected, ws)]
    assert not np.allclose(expected[0], seen[-1][0])  # the average is not the last weights
    # fit's end puts the average into the model (Keras finalize_variable_values)
    for v, e in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)
    # averaged_weights: the average inside the block, the model's own values after it
    for v, w in zip(model.trainable_variables, seen[-1]):
        v.assign(w)
    with averaged_weights(model):
        for v, e in zip(model.trainable_variables, expected):
            np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)
    for v, w in zip(model.trainable_variables, seen[-1]):
        np.testing.assert_array_equal(v.numpy(), w)


def test_no_average_leaves_weights_alone():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt, _ = make_optimizer(_C(), 0.1, 0.9)
    assert not opt.use_ema
    model.compile(optimizer=opt, loss="mse")
    before = [v.numpy().copy() for v in model.trainable_variables]
    with averaged_weights(model):
        pass
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_raw_weights_at_stop_are_the_last_step_not_the_average():
    """fit writes the average into the model at its end; RawWeightsAtStop keeps what came before
    (the recipe scores both at its last point)."""
    from mrcnn_nuclei.recipes import RawWeightsAtStop

    model, x, y = _ema_model(1)
    seen = []

    class StopAtThird(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append([v.numpy().copy() for v in model.trainable_variables])
            if len(seen) == 3:
                self.model.stop_training = True

    raw = RawWeightsAtStop()
    off = RawWeightsAtStop(enabled=False)
    model.fit(x, y, batch_size=2, epochs=5, shuffle=False, verbose=0,
              callbacks=[StopAtThird(), raw, off])
    assert len(seen) == 3 and off.values is None
    for kept, last, now in zip(raw.values, seen[-1], model.trainable_variables):
        np.testing.assert_array_equal(kept, last)
        assert not np.allclose(now.numpy(), last)  # the model holds the average now
