"""mrcnn_nuclei.schedules: named stage lists, epoch totals, LR factors, resume skipping.

run_schedule is pure scheduling logic, so it is checked against a recording stand-in for MaskRCNN
that behaves like Matterport's train(): it trains from model.epoch up to `epochs` and advances.
"""

import pytest

from mrcnn_nuclei import schedules as S
from mrcnn_nuclei.schedules import Stage


class RecordingModel:
    """Records train() calls; advances .epoch like MaskRCNN.train."""

    def __init__(self, epoch=0):
        self.epoch = epoch
        self.calls = []

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
              **kwargs):
        self.calls.append(dict(start=self.epoch, epochs=epochs, layers=layers, lr=learning_rate,
                               aug=augmentation, data=(train_dataset, val_dataset), **kwargs))
        self.epoch = max(self.epoch, epochs)


def test_named_schedules():
    assert S.build_schedule("matterport") == [Stage("heads", 20, 1.0), Stage("all", 40, 1.0)]
    three = S.build_schedule("three-stage")
    assert [s.layers for s in three] == ["heads", "4+", "all"]
    assert [s.lr_factor for s in three] == [1.0, 1.0, 0.1]
    plus = S.build_schedule("mrcnn-plus")
    assert [s.lr_factor for s in plus] == [2.0, 1.0, 0.5, 0.1]
    assert [s.layers for s in plus[1:]] == ["all", "5+", "heads"]
    import re
    assert re.fullmatch(plus[0].layers, "PREPROC") and re.fullmatch(plus[0].layers, "mrcnn_mask")
    assert re.fullmatch(plus[0].layers, "rpn_conv_shared")
    assert not re.fullmatch(plus[0].layers, "res2a_branch2a")
    assert S.build_schedule("scratch", epochs="3") == [Stage("all", 3, 1.0)]
    for name in S.SCHEDULES:
        totals = [s.epochs_total for s in S.build_schedule(name)]
        assert totals == sorted(set(totals)) and totals[0] >= 1


def test_epochs_and_lr_overrides():
    assert [s.epochs_total for s in S.build_schedule("matterport", epochs="1,3")] == [1, 3]
    assert [s.epochs_total for s in S.build_schedule("three-stage", epochs=[2, 4, 5])] == [2, 4, 5]
    sched = S.build_schedule("matterport", lr=[1.0, 0.25])
    assert [s.lr_factor for s in sched] == [1.0, 0.25]
    assert S.parse_epochs(" 20, 40") == [20, 40]


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="cosine"), "unknown; choose one of matterport, three-stage, mrcnn-plus, scratch"),
    (dict(name="matterport", epochs=[20]), r"2 stages; give 2 epoch totals.*--epochs=20,40"),
    (dict(name="matterport", epochs=[40, 20]), "larger than the previous"),
    (dict(name="matterport", epochs=[0, 20]), "at least 1"),
    (dict(name="matterport", epochs="20;40"), "--epochs='20;40'"),
    (dict(name="matterport", lr=[1.0]), "2 positive learning-rate factors"),
    (dict(name="matterport", lr=[1.0, -1]), "2 positive learning-rate factors"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.build_schedule(**kwargs)


def test_run_schedule_counts_total_epochs_and_scales_lr():
    model = RecordingModel()
    sched = S.build_schedule("mrcnn-plus", epochs=[1, 3, 4, 6])
    ran = S.run_schedule(model, "train", "val", sched, base_lr=0.01, augmentation="aug",
                         workers=2)
    assert ran == sched
    assert [(c["start"], c["epochs"]) for c in model.calls] == [(0, 1), (1, 3), (3, 4), (4, 6)]
    assert [c["lr"] for c in model.calls] == pytest.approx([0.02, 0.01, 0.005, 0.001])
    assert [c["layers"] for c in model.calls][1:] == ["all", "5+", "heads"]
    assert all(c["aug"] == "aug" and c["workers"] == 2 and c["data"] == ("train", "val")
               for c in model.calls)
    assert model.epoch == 6


@pytest.mark.parametrize("resume_at, expected", [
    (20, [(20, 40, "all")]),          # first stage complete: only the second runs
    (25, [(25, 40, "all")]),          # mid second stage: it continues
    (12, [(12, 20, "heads"), (20, 40, "all")]),
    (40, []),                         # everything done
])
def test_run_schedule_skips_completed_stages_when_resuming(resume_at, expected):
    model = RecordingModel(epoch=resume_at)
    S.run_schedule(model, None, None, S.build_schedule("matterport"), base_lr=0.001)
    assert [(c["start"], c["epochs"], c["layers"]) for c in model.calls] == expected


def test_run_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        S.run_schedule(RecordingModel(), None, None, [], base_lr=0.1)
    with pytest.raises(ValueError, match="base_lr=0"):
        S.run_schedule(RecordingModel(), None, None, S.build_schedule("matterport"), base_lr=0)


def test_describe():
    text = S.describe(S.build_schedule("matterport"), 0.001)
    assert text.splitlines() == ["epochs   1-20  layers=heads  lr=0.001",
                                 "epochs  21-40  layers=all  lr=0.001"]


def test_train_cli_schedule_presets_with_configurable_epochs():
    # every preset is reachable as samples/nucleus/train.py --schedule NAME --epochs E1,E2,..
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "samples" / "nucleus" / "train.py"
    spec = importlib.util.spec_from_file_location("nucleus_train_for_schedule_test", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    common = ["train", "--dataset=synthetic", "--weights=none"]
    args = cli.build_parser().parse_args(common)
    assert args.schedule == "matterport"
    assert S.build_schedule(args.schedule, epochs=args.epochs) == list(S.SCHEDULES["matterport"])
    for name, epochs in [("matterport", "2,5"), ("three-stage", "1,2,3"),
                         ("mrcnn-plus", "1,2,3,4"), ("scratch", "7")]:
        args = cli.build_parser().parse_args(common + [f"--schedule={name}", f"--epochs={epochs}"])
        sched = S.build_schedule(args.schedule, epochs=args.epochs)
        assert [s.epochs_total for s in sched] == S.parse_epochs(epochs)
        assert [s.lr_factor for s in sched] == [s.lr_factor for s in S.SCHEDULES[name]]
