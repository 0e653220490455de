"""A sweep's progress, without Ray or DVC: the lines of a run's log the worker reports, the driver's board of
runs (their ETAs and the sweep's, on a simulated clock), its lines off a terminal and its table on one."""
import io
import json
import math
import time

from tools.sweep import Board, duration, queued_etas, run_eta, sweep_eta
from tools.sweep_worker import PROGRESS_MARK, Follow, Reporter, progress_event

EPOCH_LINE = "mixup epoch 3/35 (mixed): train loss 1.4012, eval loss 0.9100, eval acc 0.7022, 3509 img/s, 14.2 s"


def test_the_worker_reads_stages_epochs_and_resumes_from_the_log(tmp_path, capsys):
    assert progress_event("Running stage 'train@mixup':") == {"stage": "train@mixup"}
    assert progress_event(EPOCH_LINE) == {"epoch": 3, "epochs": 35, "eval_acc": 0.7022, "seconds": 14.2}
    assert progress_event("baseline epoch 1/2: train loss 2.2, eval loss 2.1, eval acc 0.3900, 1694 img/s, 0.1 s") \
        == {"epoch": 1, "epochs": 2, "eval_acc": 0.39, "seconds": 0.1}
    assert progress_event("resuming mixup after epoch 7 from data/resume/mixup.pt") == {"resumed": 7}
    for other in ("Stage 'train@baseline' didn't change, skipping", "mixup: peak eval acc 0.4500 (epoch 2), ...",
                  "training path: cpu", ""):
        assert progress_event(other) is None

    log = tmp_path / "log.txt"
    log.write_text("$ dvc exp run\nRunning stage 'train@mixup':\n")
    follow = Follow(str(log))
    follow.start()
    with log.open("a") as f:  # a line written in two pieces is read once, whole
        f.write(EPOCH_LINE[:20])
        f.flush()
        time.sleep(0.6)  # the thread reads the first piece alone
        f.write(EPOCH_LINE[20:] + "\nresuming mixup after epoch 3 from data/resume/mixup.pt\n")
    follow.stop()
    printed = [json.loads(line.removeprefix(PROGRESS_MARK)) for line in capsys.readouterr().out.splitlines()]
    assert printed == [{"stage": "train@mixup"}, progress_event(EPOCH_LINE), {"resumed": 3}]


def test_a_queue_that_is_gone_ends_the_reports_never_the_run():
    class Gone:
        calls = 0

        def put_nowait(self, item):
            Gone.calls += 1
            raise RuntimeError("the actor died")
    report = Reporter(Gone(), "alpha0.4")
    report({"state": "running"})
    report({"stage": "train@mixup"})
    assert Gone.calls == 1
    Reporter(None, "alpha0.4")({"state": "running"})  # no queue: nothing to do


def test_the_eta_with_a_fixed_epoch_time_is_exact_and_never_increases():
    # One run: 5 epochs of 10 s, the ETA read every half second.
    etas = []
    for tick in range(101):
        now = tick / 2
        done = min(5, math.floor(now / 10))
        etas.append(run_eta(5 - done, 10.0, now - 10 * done))
        assert math.isclose(etas[-1], 50 - now, abs_tol=1e-9)
    assert all(later <= earlier for earlier, later in zip(etas, etas[1:], strict=False))
    assert run_eta(3, None) is None and run_eta(0, None) == 0.0
    # The sweep's: runs in flight end after their ETAs, the queued start on the first worker free.
    assert queued_etas([30.0, 10.0], [20.0, 5.0, 5.0], workers=2) == [30.0, 35.0, 35.0]
    assert sweep_eta([30.0, 10.0], [20.0, 5.0, 5.0], workers=2) == 35.0
    assert sweep_eta([], [20.0, 5.0], workers=3) == 20.0 and sweep_eta([5.0, None], [], workers=2) is None

    # Three runs on two workers, 10 s an epoch, 3 epochs a training stage: A trains the baseline and mixup
    # (0-60 s), B mixup at another alpha (0-30 s), then C mixup at a third (30-60 s). The sweep ends at 60 s.
    now = [0.0]
    board = Board(workers=2, every=30, tty=True, clock=lambda: now[0])
    board.add("A", [("train@baseline", "k0"), ("train@mixup", "k1")], 3)
    board.add("B", [("train@mixup", "k2")], 3)
    board.add("C", [("train@mixup", "k3")], 3)
    timeline = {0: [("A", {"state": "running"}), ("A", {"stage": "train@baseline"}),
                    ("B", {"state": "running"}), ("B", {"stage": "train@mixup"})],
                30: [("B", "done"), ("C", {"state": "running"}), ("C", {"stage": "train@mixup"}),
                     ("A", {"stage": "train@mixup"})],
                60: [("A", "done"), ("C", "done")]}
    for second in (10, 20, 30):
        timeline.setdefault(second, [])[:0] = [(name, epoch(second // 10)) for name in ("A", "B")]
    for second in (40, 50, 60):
        timeline.setdefault(second, [])[:0] = [(name, epoch(second // 10 - 3)) for name in ("A", "C")]
    seen = []
    for tick in range(121):
        now[0] = tick / 2
        for name, event in timeline.get(now[0], []):
            if event == "done":
                board.finish(name, True)
            else:
                board.report({**event, "name": name})
        etas, sweep = board.etas(now[0])
        if now[0] < 10:  # no epoch timed yet
            assert sweep is None
            continue
        assert math.isclose(sweep, 60 - now[0], abs_tol=1e-9), (now[0], sweep, etas)
        if now[0] < 60:
            assert math.isclose(etas["A"], 60 - now[0], abs_tol=1e-9)
        if now[0] < 30:
            assert math.isclose(etas["B"], 30 - now[0], abs_tol=1e-9) and math.isclose(etas["C"], 60 - now[0])
        seen.append(sweep)
    assert all(later <= earlier for earlier, later in zip(seen, seen[1:], strict=False))


def epoch(k, epochs=3, seconds=10.0, acc=0.5):
    return {"epoch": k, "epochs": epochs, "eval_acc": acc, "seconds": seconds}


def test_a_queued_run_counts_only_the_training_it_does_not_share():
    """C's baseline is A's: C restores it, so its ETA counts its mixup alone."""
    board = Board(workers=1, every=30, tty=True, clock=lambda: 0.0)
    board.add("A", [("train@baseline", "seed1"), ("train@mixup", "a1")], 2)
    board.add("C", [("train@baseline", "seed1"), ("train@mixup", "a2")], 2)
    board.report({"name": "A", "state": "running"})
    board.report({"name": "A", "stage": "train@baseline"})
    board.report({"name": "A", **epoch(1, epochs=2)})
    etas, sweep = board.etas(0.0)
    assert etas == {"A": 30.0, "C": 50.0} and sweep == 50.0


def test_off_a_terminal_a_run_prints_a_line_at_each_change_and_at_most_every_n_seconds():
    now, out = [0.0], io.StringIO()
    board = Board(workers=1, every=30, tty=False, clock=lambda: now[0], out=out)
    board.add("alpha0.4", [("train@mixup", "k")], 10)
    board.add("alpha0.8", [("train@mixup", "k2")], 10)  # queued after it

    def report(second, **event):
        now[0] = second
        board.report({"name": "alpha0.4", **event})
    report(0, state="running")
    report(0, stage="train@mixup")
    for k in range(1, 10):
        report(10 * k, **epoch(k, epochs=10))
    report(95, state="running")  # Ray's retry of it, after its worker died
    report(96, stage="train@mixup")
    report(97, resumed=9)
    report(107, **epoch(10, epochs=10))
    lines = out.getvalue().splitlines()
    assert lines[0] == "  alpha0.4  running  ETA ?  (sweep ETA ?)"
    assert lines[1] == "  alpha0.4  running  train@mixup  ETA ?  (sweep ETA ?)"
    assert lines[2:5] == [f"  alpha0.4  running  train@mixup  epoch {k}/10  eval acc 0.5000  ETA {duration(eta)}  "
                          f"(sweep ETA {duration(sweep)})" for k, eta, sweep in
                          [(3, 70, 170), (6, 40, 140), (9, 10, 110)]]  # alpha0.8 after it: 10 epochs more
    assert lines[5:] == ["  alpha0.4  running  attempt 2  ETA 1 min 40 s  (sweep ETA 3 min 20 s)",
                         "  alpha0.4  running  attempt 2  train@mixup  ETA 1 min 40 s  (sweep ETA 3 min 20 s)",
                         "  alpha0.4  running  attempt 2, resumed after epoch 9  train@mixup  epoch 9/10  "
                         "ETA 10 s  (sweep ETA 1 min 50 s)"]  # epoch 10, 10 s after the resume: no line


def test_on_a_terminal_a_table_of_every_run_is_redrawn():
    now, out = [0.0], io.StringIO()
    board = Board(workers=1, every=30, tty=True, clock=lambda: now[0], out=out)
    for name in ("alpha0.2", "alpha0.4", "alpha0.8"):
        board.add(name, [("train@mixup", name)], 35)
    for event in ({"state": "running"}, {"stage": "train@mixup"}, epoch(3, epochs=35, seconds=14.2, acc=0.7022)):
        board.report({"name": "alpha0.4", **event})
    board.finish("alpha0.2", False)
    assert board.table(0.0, rows=10) == [
        "run       state    attempt  stage        epoch  eval acc  ETA",
        "alpha0.2  failed   -        -            -      -         -",
        "alpha0.4  running  1        train@mixup  3/35   0.7022    7 min 34 s",
        "alpha0.8  queued   -        -            -      -         15 min 51 s",
        "sweep: 1 running, 1 queued, 0 done, 1 failed; ETA 15 min 51 s"]
    assert board.table(0.0, rows=2)[1:] == ["alpha0.4  running  1        train@mixup  3/35   0.7022    7 min 34 s",
                                            "alpha0.2  failed   -        -            -      -         -",
                                            "... 1 more; sweep: 1 running, 1 queued, 0 done, 1 failed; "
                                            "ETA 15 min 51 s"]
    board.tick()
    assert out.getvalue().count("\n") == 5 and board.drawn == 5
    board.tick()  # not yet due
    board.clear()  # before a line that stays: the cursor goes back up over the table, which is erased
    assert out.getvalue().endswith("\x1b[5F\x1b[J") and board.drawn == 0
