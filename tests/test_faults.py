"""Faults that lose nothing: a checkpoint that cannot be written (disk full), said in one line.

Training goes on without checkpoints, the parameters reach --out, the last good checkpoint still
restores, no partial directory is left, and the exit code says a checkpoint was missed.
"""

import errno
import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest

from handgrad.cli import main
from handgrad.train import data as datasets
from handgrad.train import loop as trainer
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


def test_disk_full_at_a_checkpoint_is_one_line_and_loses_nothing(tmp_path, capsys, disk_fills_at_save):
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
    config = TrainConfig(**IRIS, checkpoint_dir=str(ckpt), checkpoint_every=4)
    data = datasets.load("iris")
    checkpoints = Checkpoints(str(ckpt), trainer.signature(config, data))
    run = trainer.Run(config, data, "softmax", *datasets.split(data, 0.1, 0.2, 0).values(), checkpoints=checkpoints)
    tree, record, skipped = checkpoints.restore(run.initial_state()[0])
    assert record["step"] == last_good < missed and not skipped
    assert all(np.all(np.isfinite(np.asarray(w))) for w in tree.params[0].values())


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
