"""The mrcnn-nuclei command: --help on every sub-command, and a model folder made by save-model
from a checkpoint, then used by evaluate (samples/nucleus/evaluate.py, end to end as a script),
detect and info."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrcnn_nuclei import cli
from tiny_model import tiny_inference_model

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "detect", "evaluate", "info", "save-model", "segment")


def test_help_of_every_sub_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        assert done.value.code == 0, command
        assert f"mrcnn-nuclei {command}" in capsys.readouterr().out
    args = cli.build_parser().parse_args(["train", "--dataset=synthetic", "--weights=none",
                                          "--epochs=1", "--steps-per-epoch=3"])
    assert (args.command, args.epochs, args.steps_per_epoch) == ("train", "1", 3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A training-run-style checkpoint of a tiny model with <stem>.json beside it."""
    from mrcnn_nuclei.weights import save_weights

    root = tmp_path_factory.mktemp("cli")
    model = tiny_inference_model(root / "logs", seed=2)
    return save_weights(model.keras_model, root / "run" / "mask_rcnn_tiny_0003.weights.h5",
                        config=model.config)


@pytest.mark.slow
def test_save_model_then_evaluate_detect_and_info(checkpoint, tmp_path, capsys):
    folder = tmp_path / "model"
    assert cli.main(["save-model", f"--weights={checkpoint}", f"--out={folder}",
                     "--min-size", "2", "--overlap", "area"]) == 0
    settings = json.loads((folder / "postprocess.json").read_text())
    assert settings["min_size"] == 2 and settings["overlap"] == "area"
    assert f"model folder {folder}" in capsys.readouterr().out

    assert cli.main(["info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "native" and info["config"]["NAME"] == "tiny"
    assert info["config"]["file"] == str(folder / "config.json")
    assert info["postprocess"]["overlap"] == "area"

    # the script, end to end in its own process, on the model folder
    out = tmp_path / "eval"
    run = subprocess.run([sys.executable, str(REPO / "samples" / "nucleus" / "evaluate.py"),
                          "--dataset=synthetic", f"--weights={folder}", "--limit=1",
                          f"--logs={tmp_path / 'logs'}", f"--out={out}", "--no-progress"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "DSB2018 score" in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 1
    assert summary["post_processing"]["min_size"] == 2             # the folder's settings
    assert summary["post_processing"]["resolve_overlaps"] == "area"
    assert len(list((out / "labels").glob("*.tif"))) == 1

    assert cli.main(["detect", "--dataset=synthetic", f"--weights={folder}", "--limit=1",
                     f"--logs={tmp_path / 'logs'}", f"--out={tmp_path / 'det'}",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"Weights: {folder / 'weights.weights.h5'}" in printed and "1 images" in printed
    with open(tmp_path / "det" / "submit.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "EncodedPixels"] and {r[0] for r in rows[1:]} == {"0"}
