"""`handgrad train`: data checks, one-line errors, the oracle beside training, early stopping,
k-fold, checkpoints (refused when foreign, kept on divergence, bitwise after kill -9), and
training over two processes."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from properties.cli import main
from reference import datasets, trainer
from reference.checkpoints import CheckpointError, Checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IRIS = {"dataset": "iris", "hidden": (16,), "batch_size": 15, "epochs": 3}


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _bad_inputs(tmp):
    ones = np.ones((6, 2))
    corrupt = tmp / "corrupt.npz"
    corrupt.write_bytes(b"not a zip archive")
    return [
        (["--dataset", str(tmp / "missing.npz")], "no such file: "),
        (["--dataset", str(corrupt)], "is not a .npz (zip) archive"),
        (["--dataset", _npz(tmp / "keys.npz", features=ones, y=np.arange(6))], "expected X and y"),
        (["--dataset", _npz(tmp / "len.npz", X=ones, y=np.arange(5))], "X has 6 rows but y has 5"),
        (["--dataset", _npz(tmp / "nan.npz", X=np.where(np.eye(6, 2) > 0, np.nan, 1.0), y=np.arange(6) % 2)],
         "X has 2 non-finite values, e.g. X[0, 0] = nan"),
        (["--dataset", _npz(tmp / "neg.npz", X=ones, y=np.array([0, 1, -1, 0, 1, 0]))],
         "labels must be integers 0..C-1, got y[2] = -1"),
        (["--dataset", _npz(tmp / "frac.npz", X=ones, y=np.array([0, 1, 0.5, 0, 1, 0])), "--task", "classification"],
         "got y[2] = 0.5"),
        (["--dataset", _npz(tmp / "onebased.npz", X=ones, y=np.array([1, 2, 3, 1, 2, 3]))],
         "class 0 never occurs (are they 1-based?)"),
        (["--dataset", "wine"], "neither a bundled data set"),
        (["--activation", "swish"], "argument --activation: invalid choice: 'swish'"),
        (["--hidden", "32,x"], "argument --hidden: expected comma-separated integers, got '32,x'"),
        (["--schedule", "linear"], "argument --schedule: invalid choice"),
        (["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], "must be below 1"),
        (["--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
        (["--dataset", "breast_cancer", "--loss", "hinge"], "breast_cancer is a binary task"),
        (["--dataset", "iris", "--batch-size", "500"], "larger than the training split (105 samples)"),
        (["--resume"], "--resume needs --checkpoint-dir"),
    ]


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, capsys):
    for argv, expected in _bad_inputs(tmp_path):
        try:
            code = main(["train", *argv])
        except SystemExit as e:  # argparse's own exit, through _Parser.error
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("handgrad train: "), (argv, err)
        assert expected in err and "Traceback" not in err, (argv, err)


def test_split_is_stratified_and_standardised_on_train_only():
    data = datasets.load("iris")
    parts = datasets.split(data, 0.2, 0.2, seed=0)
    assert sorted(np.concatenate(list(parts.values()))) == list(range(150))
    for name, size in (("train", 90), ("val", 30), ("test", 30)):
        counts = np.bincount(data.y[parts[name]])
        assert len(parts[name]) == size and counts.max() - counts.min() <= 1, (name, counts)
    train, val = datasets.standardize(data.X[parts["train"]], data.X[parts["val"]])
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-5)
    assert np.abs(val.mean(axis=0)).max() > 1e-3  # val's own statistics were not used
    folds = datasets.kfold(data, parts["train"], 3, seed=0)
    assert [len(v) for _, v in folds] == [30, 30, 30]
    assert sorted(np.concatenate([v for _, v in folds])) == sorted(parts["train"])


@pytest.mark.standard_promotion  # the reference side runs optax's cosine schedule
def test_reference_run_stays_within_float32_rounding_of_pure():
    config = trainer.TrainConfig(**{**IRIS, "epochs": 2}, dropout=0.2, l1=1e-3, l2=1e-3, max_norm=2.0, reference=True)
    rows = []
    summary = trainer.train(config, log=rows.append)
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    assert 0 < summary["ref_max_diff"] < 1e-5, summary["ref_max_diff"]
    assert any("largest parameter difference from jax.grad + optax" in r for r in rows)


def test_early_stopping_keeps_the_best_parameters_and_out_has_metrics_params_and_plots(tmp_path):
    config = trainer.TrainConfig(**{**IRIS, "epochs": 40}, lr=0.2, early_stopping=2, out=str(tmp_path))
    summary = trainer.train(config, log=lambda _: None)
    history, best = summary["history"], summary["best_epoch"]
    assert len(history) == best + 2 < 40  # stopped two epochs after the best
    assert history[best - 1]["val_metric"] > max(r["val_metric"] for r in history[best:])
    data = datasets.load("iris")
    parts = datasets.split(data, config.val_fraction, config.test_fraction, config.seed)
    _, Xva = datasets.standardize(data.X[parts["train"]], data.X[parts["val"]])
    logits = jax.jit(lambda p, x: trainer.pure.nn.mlp(p, x))(summary["params"], Xva)
    assert np.mean(np.argmax(logits, axis=1) == data.y[parts["val"]]) == history[best - 1]["val_metric"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_epoch"] == best and metrics["test_metric"] == summary["test_metric"]
    saved = np.load(tmp_path / "params.npz")
    np.testing.assert_array_equal(saved["0/W"], summary["params"][0]["W"])
    for png in ("curves.png", "weights.png", "grad_norms.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kfold_reports_mean_and_std_over_folds():
    rows = []
    summary = trainer.train(trainer.TrainConfig(**{**IRIS, "epochs": 1}, kfold=3), log=rows.append)
    scores = [f["val_metric"] for f in summary["folds"]]
    assert len(scores) == 3 and summary["cv_mean"] == pytest.approx(np.mean(scores))
    assert summary["cv_std"] == pytest.approx(np.std(scores))
    assert f"3-fold cross-validation: val acc {np.mean(scores):.4f} ± {np.std(scores):.4f}" in rows[-2]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    trainer.train(trainer.TrainConfig(**{**IRIS, "epochs": 1}, checkpoint_dir=ckpt), log=lambda _: None)
    with pytest.raises(trainer.TrainError, match="already holds checkpoints .* pass --resume"):
        trainer.train(trainer.TrainConfig(**{**IRIS, "epochs": 1}, checkpoint_dir=ckpt), log=lambda _: None)
    other_model = trainer.TrainConfig(**{**IRIS, "epochs": 1, "hidden": (8,)}, checkpoint_dir=ckpt, resume=True)
    with pytest.raises(CheckpointError, match=r"different run: hidden is \[16\] there but \[8\] here"):
        trainer.train(other_model, log=lambda _: None)
    other_data = trainer.TrainConfig(**{**IRIS, "epochs": 1, "dataset": "digits"}, checkpoint_dir=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="dataset is 'iris' there but 'digits' here.*data is 'iris: 150x4"):
        trainer.train(other_data, log=lambda _: None)


def _latest_checkpoint(config, directory):
    """The newest checkpoint in ``directory``, restored as ``handgrad train --resume`` would."""
    data = datasets.load(config.dataset)
    checkpoints = Checkpoints(directory, config.signature(data))
    run = trainer.Run(config, data, "softmax", *datasets.split(data, 0.1, 0.2, 0).values(), checkpoints=checkpoints)
    return checkpoints.restore(run.initial_state()["tree"])


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys):
    ckpt = str(tmp_path / "ckpt")
    argv = ["train", "--dataset", "iris", "--hidden", "16", "--batch-size", "15", "--lr", "1e30",
            "--checkpoint-dir", ckpt, "--checkpoint-every", "1"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("handgrad train: non-finite loss (nan) at step ") and "\n" not in err
    last = int(err.split("the last good checkpoint is step ")[1].split()[0])
    assert int(err.split(" at step ")[1].split()[0]) == last + 1
    config = trainer.TrainConfig(dataset="iris", hidden=(16,), batch_size=15, lr=1e30, checkpoint_dir=ckpt,
                                 checkpoint_every=1)
    tree, record = _latest_checkpoint(config, ckpt)
    assert record["step"] == last
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(tree["params"]))


def _cli(*args):
    return [sys.executable, "-m", "properties.cli", "train", *args]


def test_kill_9_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    # digits: 1257 train samples / 32 = 39 steps an epoch; checkpoints at steps 13 and 26 of each epoch and
    # at its end. The victim is killed as soon as a checkpoint inside epoch 2 is started (it may be half written).
    config = trainer.TrainConfig(hidden=(16,), epochs=3, batch_size=32, checkpoint_every=13)
    args = ["--hidden", "16", "--epochs", "3", "--batch-size", "32", "--checkpoint-every", "13"]
    trainer.train(dataclasses.replace(config, checkpoint_dir=str(tmp_path / "whole")), log=lambda _: None)

    ckpt = tmp_path / "killed"
    victim = subprocess.Popen(_cli(*args, "--checkpoint-dir", str(ckpt)), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    started = []
    while not started and victim.poll() is None:
        time.sleep(0.002)
        started = [d for d in os.listdir(ckpt) if d.split(".")[0] in ("52", "65")] if ckpt.exists() else []
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"

    resumed = subprocess.run(_cli(*args, "--checkpoint-dir", str(ckpt), "--resume"), cwd=ROOT, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step " in resumed.stdout and "test acc " in resumed.stdout
    assert "\r" not in resumed.stdout + resumed.stderr  # no TTY: no progress bar, but the rows
    (whole, whole_record), (again, record) = (_latest_checkpoint(config, str(d)) for d in (tmp_path / "whole", ckpt))
    assert record["step"] == whole_record["step"] == 3 * 39
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)  # params, optimizer state and key: bit for bit
    timeless = [[{k: v for k, v in r.items() if k != "examples_per_s"} for r in rec["history"]]
                for rec in (whole_record, record)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 3


def test_two_processes_of_two_devices_match_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--dataset", "iris", "--hidden", "16", "--epochs", "2", "--batch-size", "20", "--out", str(tmp_path),
            "--no-plots"]
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen(_cli(*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(i)), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "4 device(s) in 2 process(es)" in outs[0][0] and "test acc" in outs[0][0]
    assert "epoch" not in outs[1][0]  # only process 0 reports
    config = trainer.TrainConfig(dataset="iris", hidden=(16,), epochs=2, batch_size=20)
    single = trainer.train(config, log=lambda _: None)["params"]
    together = np.load(tmp_path / "params.npz")
    for i, layer in enumerate(single):
        for name, value in layer.items():
            np.testing.assert_allclose(together[f"{i}/{name}"], value, rtol=1e-5, atol=1e-6)
