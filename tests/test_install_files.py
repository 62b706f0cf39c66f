"""GPU install path (issue 10.11): requirements-gpu.txt and the setup.cfg ``gpu`` extra install
tensorflow[and-cuda], never tensorflow-cpu, and otherwise match requirements.txt."""

import configparser

from packaging.requirements import Requirement

from conftest import REPO


def _requirements(path):
    lines = [line.strip() for line in (REPO / path).read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def _tf(reqs):
    return [r for r in reqs if r.name.startswith("tensorflow")]


def _linux_x86():
    return {"platform_system": "Linux", "platform_machine": "x86_64", "sys_platform": "linux"}


def _chosen(reqs, env):
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def test_gpu_requirements_pick_tensorflow_and_cuda_on_linux():
    gpu = _requirements("requirements-gpu.txt")
    linux = _chosen(_tf(gpu), _linux_x86())
    assert [(r.name, r.extras) for r in linux] == [("tensorflow", {"and-cuda"})]
    assert not any(r.name == "tensorflow-cpu" for r in gpu)
    cpu = _chosen(_tf(_requirements("requirements.txt")), _linux_x86())
    assert [r.name for r in cpu] == ["tensorflow-cpu"]  # the CPU path stays CPU-only
    assert str(linux[0].specifier) == str(cpu[0].specifier)  # same TensorFlow versions


def test_gpu_requirements_match_the_rest_of_requirements_txt():
    def rest(path):
        return {str(r) for r in _requirements(path) if not r.name.startswith("tensorflow")}

    cpu, gpu = rest("requirements.txt"), rest("requirements-gpu.txt")
    assert cpu == gpu, ("requirements-gpu.txt must list every requirements.txt line except "
                        f"TensorFlow; add {sorted(cpu - gpu)}, remove {sorted(gpu - cpu)}")


def test_setup_cfg_gpu_extra():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extra = [Requirement(x) for x in cfg["options.extras_require"]["gpu"].strip().splitlines()]
    linux = _chosen(extra, _linux_x86())
    assert [(r.name, r.extras) for r in linux] == [("tensorflow", {"and-cuda"})]
    assert not any(r.name == "tensorflow-cpu" for r in extra)
    install = cfg["options"]["install_requires"]
    assert "tensorflow" not in install  # TensorFlow only from requirements files or the extra
