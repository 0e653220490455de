"""The sweep benchmark's wait on DVC's queue, against scripted `dvc queue status` answers (no DVC run), and
the capture of a command that leaves a daemon behind, as `dvc queue start` does."""
import os
import signal

import pytest

from bench import sweep_speed
from tools.runs import captured

QUEUED_NO_WORKER = "Task  Name  Created  Status\nab12  x  08:00 AM  Queued\n\nWorker status: 0 active, 0 idle\n"
RUNNING = "Task  Name  Created  Status\nab12  x  08:00 AM  Running\n\nWorker status: 1 active, 0 idle\n"
DONE = "Task  Name  Created  Status\nab12  x  08:00 AM  Success\n\nWorker status: 0 active, 0 idle\n"


def scripted_queue(monkeypatch, statuses, clock_step):
    """`dvc queue status` answers from `statuses` (the last one repeated; None: the command failed), and
    every other `dvc` command is recorded; the clock moves clock_step seconds per status."""
    commands, clock = [], [0.0]

    def queue_status(project, env):
        commands.append(("queue", "status"))
        clock[0] += clock_step
        return statuses.pop(0) if len(statuses) > 1 else statuses[0]

    def dvc(*args, cwd, env, timeout=None):
        commands.append(args)
        return ""
    monkeypatch.setattr(sweep_speed, "queue_status", queue_status)
    monkeypatch.setattr(sweep_speed, "dvc", dvc)
    monkeypatch.setattr(sweep_speed.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sweep_speed.time, "sleep", lambda seconds: None)
    return commands


def test_workers_that_stop_with_a_run_still_queued_are_started_again(monkeypatch, tmp_path):
    stalled = [QUEUED_NO_WORKER] * 5  # 50 s at 10 s a status: past QUEUE_STALL_S once
    commands = scripted_queue(monkeypatch, [*stalled, RUNNING, DONE], clock_step=10)
    restarts = sweep_speed.dvc_queue(tmp_path, ["mixup.alpha=0.3"], 2, {}, timeout=600)
    assert restarts == 1
    assert commands.count(("queue", "start", "-j", "2")) == 2
    assert commands[-1] == ("queue", "status")


def test_a_status_that_failed_is_asked_again(monkeypatch, tmp_path):
    commands = scripted_queue(monkeypatch, [RUNNING, None, None, RUNNING, DONE], clock_step=10)
    assert sweep_speed.dvc_queue(tmp_path, ["mixup.alpha=0.3"], 2, {}, timeout=600) == 0
    assert commands.count(("queue", "status")) == 5


def test_workers_that_are_still_starting_are_left_alone(monkeypatch, tmp_path):
    commands = scripted_queue(monkeypatch, [QUEUED_NO_WORKER, QUEUED_NO_WORKER, RUNNING, DONE], clock_step=10)
    assert sweep_speed.dvc_queue(tmp_path, ["mixup.alpha=0.3"], 2, {}, timeout=600) == 0
    assert commands.count(("queue", "start", "-j", "2")) == 1


def test_a_queue_that_never_empties_ends_in_an_error_that_shows_it_and_stops_its_workers(monkeypatch, tmp_path):
    logs = tmp_path / ".dvc/tmp/exps/celery"
    logs.mkdir(parents=True)
    (logs / "dvc-exp-worker-1.out").write_text("monitor: shutting down due to empty queue.\n")
    commands = scripted_queue(monkeypatch, [RUNNING], clock_step=10)
    with pytest.raises(SystemExit, match=r"(?s)still had runs after 60 s \(--timeout\).*Running.*"
                                         r"dvc-exp-worker-1.out:\nmonitor: shutting down"):
        sweep_speed.dvc_queue(tmp_path, ["mixup.alpha=0.3"], 2, {}, timeout=60)
    assert commands[-1] == ("queue", "stop", "--kill")


def test_a_command_that_leaves_a_daemon_behind_returns_with_its_output_at_once():
    # The daemon keeps the command's stdout and stderr for a minute: with pipes, the call would wait for it
    # (and raise TimeoutExpired here); with files, it returns when the command ends.
    done = captured(["bash", "-c", "sleep 60 & echo $!; echo queued >&2"], timeout=30)
    os.kill(int(done.stdout), signal.SIGKILL)
    assert done.returncode == 0 and done.stderr == "queued\n"
