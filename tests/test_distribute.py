"""Data-parallel training (mrcnn_nuclei.distribute): one SGD step on two devices, or in two
JAX processes on 127.0.0.1, gives the same losses and the same updated weights as one device
with the same global batch.  Each setting runs tests/distribute_worker.py in a subprocess
(devices must be configured before the backend starts)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from test_backends import HERE, jax_cache, run_worker  # noqa: F401  (jax_cache: a fixture)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist")
    run_worker("backend_worker.py", ["init", path], "tensorflow")
    return path


def _compare(work, backend, mode):
    one = np.load(work / f"dist_{backend}_single.npz")
    two = np.load(work / f"dist_{backend}_{mode}.npz")
    assert int(two["replicas"]) == 2 and int(one["replicas"]) == 1
    assert list(one["loss_names"]) == list(two["loss_names"])
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-5)
    names = [k for k in one.files if "/" in k and not k.startswith("delta:")]
    for k in names:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(two["delta:" + k], one["delta:" + k], rtol=1e-3, atol=1e-7,
                                   err_msg="update of " + k)
    # the step really moved the weights (equal weights are not "nothing happened")
    moved = sum(int(np.abs(one["delta:" + k]).max() > 1e-6) for k in names if k.endswith("kernel"))
    assert moved >= 3


def test_mirrored_strategy_two_logical_cpus_equals_one_device(work):
    run_worker("distribute_worker.py", ["single", work], "tensorflow")
    run_worker("distribute_worker.py", ["two_devices", work], "tensorflow")
    _compare(work, "tensorflow", "two_devices")  # without scale_loss the update doubles


@pytest.mark.slow
def test_jax_data_parallel_two_devices_and_two_processes_equal_one_device(work, jax_cache):
    pytest.importorskip("jax")
    env = dict(jax_cache, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    run_worker("distribute_worker.py", ["single", work], "jax", jax_cache)
    run_worker("distribute_worker.py", ["two_devices", work], "jax", env)
    _compare(work, "jax", "two_devices")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in (0, 1):
        env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                   **jax_cache)
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "distribute_worker.py"), "two_processes", str(work),
             str(pid), str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-4000:]
    _compare(work, "jax", "two_processes")
