"""Faults that lose nothing.

A checkpoint that cannot be written (disk full) is said in one line: training goes on without
checkpoints, the parameters reach --out, the last good checkpoint still restores, no partial
directory is left, and the exit code says a checkpoint was missed. A run stopped as by kill -9 at
random moments (a stretch of steps, an evaluation, before and inside a checkpoint write) resumes
to the same bits. A damaged params.npz left in --out is replaced, never read.
"""

import dataclasses
import errno
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import jax
import numpy as np
import pytest

from handgrad.cli import main
from handgrad.train import command
from handgrad.train.checkpoints import Checkpoints
from handgrad.train.config import TrainConfig

IRIS = dict(dataset="iris", hidden=(16,), batch_size=15, epochs=3, plots=False)


@pytest.fixture
def disk_fills_at_save(monkeypatch):
    """``fill(n)``: orbax's n-th save (1-based) writes part of its temporary directory, then the disk is full."""
    import orbax.checkpoint as ocp

    real = ocp.CheckpointManager.save

    def fill(n: int) -> None:
        calls = [0]

        def save(self, step, *args, **kwargs):
            calls[0] += 1
            if calls[0] < n:
                return real(self, step, *args, **kwargs)
            partial = os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-{uuid.uuid4().hex[:8]}")
            os.makedirs(os.path.join(partial, "state"))
            with open(os.path.join(partial, "state", "part"), "wb") as f:
                f.write(b"\0" * 100)
            raise ValueError("write failed") from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    return fill


def test_disk_full_at_a_checkpoint_is_one_line_and_loses_nothing(tmp_path, capsys, disk_fills_at_save,
                                                                  restore_latest):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    disk_fills_at_save(3)
    argv = ["train", "--dataset", "iris", "--hidden", "16", "--batch-size", "15", "--epochs", "3", "--no-plots",
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "4", "--out", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    warning = [line for line in captured.out.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "No space left on device" in warning[0], captured.out
    found = re.search(r"could not write the checkpoint of step (\d+) to (\S+) \(\[Errno 28\] No space left on "
                      r"device\); the last good checkpoint is step (\d+); training goes on", warning[0])
    assert found and found[2] == str(ckpt), warning[0]
    missed, last_good = int(found[1]), int(found[3])
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith(f"handgrad train: could not write the "
                                                                         f"checkpoint of step {missed}")
    assert f"its parameters are in {out}" in err
    assert (out / "params.npz").exists() and (out / "metrics.json").exists()
    assert not [n for n in os.listdir(ckpt) if "tmp" in n]  # the partial write is gone
    tree, progress, skipped = restore_latest(TrainConfig(**IRIS, checkpoint_dir=str(ckpt), checkpoint_every=4))
    assert progress.step == last_good < missed and not skipped
    assert all(np.all(np.isfinite(np.asarray(w))) for w in tree.params[0].values())


@pytest.fixture
def disk_fills_under_load(monkeypatch):
    """``fill(n)``: from orbax's n-th save on, the disk is full, as on a loaded machine. The save's first array fails
    at once; the writes of the others, in flight, fail LATE seconds later in threads of their own, as tensorstore's
    do, when orbax has given up on the save and closed the event loop they report to. Returns those threads."""
    import orbax.checkpoint as ocp
    import tensorstore as ts
    from orbax.checkpoint._src.serialization import type_handlers

    real_save, real_write = ocp.CheckpointManager.save, type_handlers.NumpyHandler._open_and_write
    saves, writes, late = [0], [0], []

    def save(self, step, *args, **kwargs):
        saves[0], writes[0] = saves[0] + 1, 0
        return real_save(self, step, *args, **kwargs)

    def fill(n: int) -> list[threading.Thread]:
        async def open_and_write(self, *args, **kwargs):
            if saves[0] < n:
                return await real_write(self, *args, **kwargs)
            writes[0] += 1
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if writes[0] == 1:
                raise full
            promise, future = ts.Promise.new()
            late.append(threading.Thread(target=lambda: (time.sleep(LATE), promise.set_exception(full))))
            late[-1].start()
            await future
        monkeypatch.setattr(ocp.CheckpointManager, "save", save)
        monkeypatch.setattr(type_handlers.NumpyHandler, "_open_and_write", open_and_write)
        return late
    return fill


LATE = 0.5


def test_disk_full_under_load_prints_one_line_and_no_traceback(tmp_path, capfd, monkeypatch, disk_fills_under_load):
    # Each write that failed late raised "Event loop is closed" in its thread, printed as a bare traceback
    # whenever it came: 13 of them beside the full test suite. Python's hook, here, receives anything not caught.
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    late = disk_fills_under_load(2)
    argv = ["train", "--dataset", "iris", "--hidden", "16", "--batch-size", "15", "--epochs", "2", "--no-plots",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "4", "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    for thread in late:
        thread.join()
    out, err = capfd.readouterr()
    assert len(late) >= 2 and not reported, [u.exc_value for u in reported]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "[Errno 28] No space left on device" in err and (tmp_path / "out" / "params.npz").exists()
    assert sum(line.startswith("warning:") for line in out.splitlines()) == 1, out


def test_orbax_errors_reach_the_log_as_one_line_each(tmp_path):
    lines = []
    Checkpoints(str(tmp_path / "ckpt"), {"run": 1}, log=lines.append)
    from absl import logging as absl_logging

    absl_logging.error("Failed to json parse Metadata file: %s\nsecond line", "x")
    assert lines == ["orbax: Failed to json parse Metadata file: x"]


def _mount_small_filesystem(path) -> bool:
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.subprocess
def test_a_real_full_filesystem(tmp_path):
    small = tmp_path / "small"
    if not _mount_small_filesystem(small):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = tmp_path / "out"
        run = subprocess.run([sys.executable, "-m", "handgrad.cli", "train", "--dataset", "iris", "--hidden", "16",
                              "--batch-size", "15", "--epochs", "2", "--no-plots", "--checkpoint-dir",
                              str(small / "ckpt"), "--out", str(out)], capture_output=True, text=True, timeout=240)
        assert run.returncode == 1, run.stderr[-2000:]
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr[-3000:]
        assert "No space left on device" in run.stderr and (out / "params.npz").exists()
        assert not [n for n in os.listdir(small / "ckpt") if "tmp" in n]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


# ------------------------------------------------------------------ kill -9, in-process
class Killed(BaseException):
    """kill -9, in-process: a BaseException, so no ``except Exception`` on the way runs a clean-up."""


KILLABLE = dict(dataset="iris", hidden=(16,), batch_size=15, epochs=3, plots=False, checkpoint_every=3)


@pytest.fixture
def kill_at(monkeypatch):
    """``kill_at(point)``: the run is stopped at ``point`` = (moment, step) as by kill -9; the returned hook goes to
    ``train(at=...)``. The moment "write" stops orbax half-way through writing the checkpoint of that step: its
    temporary directory partly written, the rename never done."""
    import orbax.checkpoint as ocp

    real = ocp.CheckpointManager.save
    armed: list = []

    def save(self, step, *args, **kwargs):
        if armed and armed[0] == ("write", step):
            partial = os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-{uuid.uuid4().int % 10**9}")
            os.makedirs(os.path.join(partial, "state"))
            with open(os.path.join(partial, "state", "part"), "wb") as f:
                f.write(b"\0" * 100)
            raise Killed(armed.pop())
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)

    def arm(point):
        armed[:] = [point]

        def at(moment, step):
            if armed and armed[0] == (moment, step):
                raise Killed(armed.pop())
        return at
    return arm


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run never stopped: its config, and the moments (moment, step) at which it could have been."""
    whole = TrainConfig(**KILLABLE, checkpoint_dir=str(tmp_path_factory.mktemp("whole")))
    moments = []
    command.train(whole, log=lambda _: None, at=lambda moment, step: moments.append((moment, step)))
    return whole, moments


@pytest.mark.parametrize("series", [0, 1, 2])
def test_kill_9_at_random_moments_then_resume_is_bitwise_identical(series, tmp_path, kill_at, uninterrupted,
                                                                     restore_latest):
    whole, moments = uninterrupted
    points = moments + [("write", step) for moment, step in moments if moment == "checkpoint"]
    assert {m for m, _ in points} == {"stretch", "evaluate", "checkpoint", "write"} and len(moments) == 21
    rng = np.random.default_rng(series)
    writes = [p for p in points if p[0] == "write"]
    chosen = [writes[rng.integers(len(writes))], *(points[i] for i in rng.choice(len(points), 2, replace=False))]
    chosen = sorted(set(chosen), key=lambda p: (p[1], ["stretch", "evaluate", "checkpoint", "write"].index(p[0])))

    killed = TrainConfig(**KILLABLE, checkpoint_dir=str(tmp_path / "killed"))
    for i, point in enumerate(chosen):
        with pytest.raises(Killed):
            command.train(dataclasses.replace(killed, resume=i > 0), log=lambda _: None, at=kill_at(point))
    command.train(dataclasses.replace(killed, resume=True), log=lambda _: None)

    (tree, progress, _), (again, resumed, _) = restore_latest(whole), restore_latest(killed)
    assert resumed.step == progress.step == 21
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)  # params, optimizer state and key: bit for bit
    assert [dataclasses.replace(r, examples_per_s=0.0) for r in progress.history] == \
        [dataclasses.replace(r, examples_per_s=0.0) for r in resumed.history]
    assert not [n for n in os.listdir(tmp_path / "killed") if "tmp" in n]  # orbax cleared the torn write


def test_a_damaged_params_npz_in_out_is_replaced_never_read(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "params.npz").write_bytes(b"PK\x03\x04 a zip archive cut short by an earlier run")
    (out / "metrics.json").write_text("{not json")
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: reads.append(path) or real_load(path, *a, **k))
    command.train(TrainConfig(**{**IRIS, "epochs": 1}, out=str(out)), log=lambda _: None)
    monkeypatch.undo()
    assert not reads
    saved = np.load(out / "params.npz")
    assert saved["0/W"].shape == (4, 16) and json.loads((out / "metrics.json").read_text())["dataset"] == "iris"
    assert sorted(os.listdir(out)) == ["metrics.json", "params.npz"]  # no partial file left
