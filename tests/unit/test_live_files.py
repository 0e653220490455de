"""What a training stage publishes while it runs (lenet_mixup/live.py): the rows so far after every epoch, the
restored ones at once after a resume, and the signal DVC's VS Code extension watches."""
import json
import os

import torch

from lenet_mixup import live, paths, training
from lenet_mixup.metrics import COLUMNS
from tests.helpers import TEST_PARAMS, curve, killed_after

TRAIN = {**TEST_PARAMS["train"], "device": "cpu"}
CPU = torch.device("cpu")


def test_a_resumed_run_shows_its_restored_rows_at_once(prepared, monkeypatch):
    four, resume = {**TRAIN, "epochs": 4}, paths.resume_state("baseline")
    killed_after(2, monkeypatch, "baseline", four, {}, CPU, resume)
    published = []
    rows, _, _, _ = training.train_variant("baseline", four, {}, CPU, resume_path=resume,
                                           on_epoch=lambda rows: published.append(curve(rows)))
    assert [len(p) for p in published] == [2, 3, 4]  # the two restored rows before any training
    assert published[-1] == curve(rows)


def test_each_epoch_is_signalled_as_dvclive_signals_it_and_the_signal_removed_at_the_end(prepared):
    (prepared / ".dvc").mkdir()
    rows = [{k: 1 for k in COLUMNS} | {"epoch": e, "seconds": 1.0, "examples_per_sec": 1.0} for e in (1, 2)]
    live.publish("baseline", rows, {"peak_eval_acc": 1.0}, 5)
    assert json.loads((prepared / live.SIGNAL).read_text()) == {"pid": os.getpid(), "step": 1}
    assert json.loads(paths.summary_json("baseline").read_text())["epochs_done"] == 2
    live.finish()
    assert not (prepared / live.SIGNAL).exists()
