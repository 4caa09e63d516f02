"""`handgrad train`: data checks, one-line errors, the oracle beside training, early stopping,
k-fold, the binary and regression paths, output that cannot be lost, checkpoints (refused when
foreign, kept on divergence, skipped when damaged, bitwise after kill -9), and two processes."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import pure.nn
from handgrad.cli import main
from handgrad.train import command, loop
from handgrad.train import data as datasets
from handgrad.train.checkpoints import CheckpointError
from handgrad.train.config import TrainConfig, TrainError
from handgrad.train.run import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IRIS = {"dataset": "iris", "hidden": (16,), "batch_size": 15, "epochs": 3}


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


_ONES = np.ones((6, 2))
BAD_INPUTS = {  # name: (argv, given a temporary directory; what the one line on stderr says)
    "missing .npz": (lambda tmp: ["--dataset", str(tmp / "missing.npz")], "no such file: "),
    "corrupt .npz": (lambda tmp: ["--dataset", _file(tmp / "corrupt.npz", b"not a zip archive")],
                     "is not a .npz (zip) archive"),
    "no X and y": (lambda tmp: ["--dataset", _npz(tmp / "keys.npz", features=_ONES, y=np.arange(6))],
                   "expected X and y"),
    "lengths differ": (lambda tmp: ["--dataset", _npz(tmp / "len.npz", X=_ONES, y=np.arange(5))],
                       "X has 6 rows but y has 5"),
    "NaN in X": (lambda tmp: ["--dataset", _npz(tmp / "nan.npz", X=np.where(np.eye(6, 2) > 0, np.nan, 1.0),
                                                y=np.arange(6) % 2)], "X has 2 non-finite values, e.g. X[0, 0] = nan"),
    "label -1": (lambda tmp: ["--dataset", _npz(tmp / "neg.npz", X=_ONES, y=np.array([0, 1, -1, 0, 1, 0]))],
                 "labels must be integers 0..C-1, got y[2] = -1"),
    "label 0.5": (lambda tmp: ["--dataset", _npz(tmp / "frac.npz", X=_ONES, y=np.array([0, 1, 0.5, 0, 1, 0])),
                               "--task", "classification"], "got y[2] = 0.5"),
    "1-based labels": (lambda tmp: ["--dataset", _npz(tmp / "onebased.npz", X=_ONES, y=np.array([1, 2, 3, 1, 2, 3]))],
                       "class 0 never occurs (are they 1-based?)"),
    "unknown data set": (lambda tmp: ["--dataset", "wine"], "neither a bundled data set"),
    "unknown activation": (lambda tmp: ["--activation", "swish"], "argument --activation: invalid choice: 'swish'"),
    "bad --hidden": (lambda tmp: ["--hidden", "32,x"], "argument --hidden: expected comma-separated integers, got '32,x'"),
    "unknown schedule": (lambda tmp: ["--schedule", "linear"], "argument --schedule: invalid choice"),
    "negative lr": (lambda tmp: ["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
    "splits over 1": (lambda tmp: ["--val-fraction", "0.6", "--test-fraction", "0.5"], "must be below 1"),
    "no val split": (lambda tmp: ["--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
    "hinge on binary": (lambda tmp: ["--dataset", "breast_cancer", "--loss", "hinge"], "breast_cancer is a binary task"),
    "batch too large": (lambda tmp: ["--dataset", "iris", "--batch-size", "500"],
                        "larger than the training split (105 samples)"),
    "--resume alone": (lambda tmp: ["--resume"], "--resume needs --checkpoint-dir"),
    "--out under a file": (lambda tmp: ["--out", _file(tmp / "a-file", b"") + "/out"],
                           "--out {tmp}/a-file/out: cannot write there (Not a directory)"),
    "--checkpoint-dir under a file": (lambda tmp: ["--checkpoint-dir", _file(tmp / "b-file", b"") + "/ckpt"],
                                      "--checkpoint-dir {tmp}/b-file/ckpt: cannot write there (Not a directory)"),
}


def _file(path, content):
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2_before_any_training(case, tmp_path, capsys):
    argv, expected = BAD_INPUTS[case]
    try:
        code = main(["train", *argv(tmp_path)])
    except SystemExit as e:  # argparse's own exit, through _Parser.error
        code = e.code
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("handgrad train: "), captured.err
    assert expected.format(tmp=tmp_path) in captured.err and "Traceback" not in captured.err, captured.err
    assert "epoch" not in captured.out  # refused before the first step


def test_every_choice_of_train_config_is_a_choice_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{relu,sigmoid,tanh,leaky_relu}" in text and "{classification,binary,regression}" in text
    assert "{he,xavier,normal}" in text and "{softmax,hinge}" in text


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
    config = TrainConfig(**{**IRIS, "epochs": 2}, dropout=0.2, l1=1e-3, l2=1e-3, max_norm=2.0, reference=True)
    rows = []
    summary = command.train(config, log=rows.append)
    assert [r.epoch for r in summary["history"]] == [1, 2]
    assert 0 < summary["ref_max_diff"] < 1e-5, summary["ref_max_diff"]
    assert any("largest parameter difference from jax.grad + optax" in r for r in rows)


def test_early_stopping_keeps_the_best_parameters_and_out_has_metrics_params_and_plots(tmp_path):
    config = TrainConfig(**{**IRIS, "epochs": 40}, lr=0.2, early_stopping=2, out=str(tmp_path))
    summary = command.train(config, log=lambda _: None)
    history, best = summary["history"], summary["best_epoch"]
    assert len(history) == best + 2 < 40  # stopped two epochs after the best
    assert history[best - 1].val_metric > max(r.val_metric for r in history[best:])
    data = datasets.load("iris")
    parts = datasets.split(data, config.val_fraction, config.test_fraction, config.seed)
    _, Xva = datasets.standardize(data.X[parts["train"]], data.X[parts["val"]])
    logits = jax.jit(lambda p, x: pure.nn.mlp(p, x))(summary["params"], Xva)
    assert np.mean(np.argmax(logits, axis=1) == data.y[parts["val"]]) == history[best - 1].val_metric
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_epoch"] == best and metrics["test_metric"] == summary["test_metric"]
    saved = np.load(tmp_path / "params.npz")
    np.testing.assert_array_equal(saved["0/W"], summary["params"][0]["W"])
    for png in ("curves.png", "weights.png", "grad_norms.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kfold_folds_are_scikit_learns_and_each_score_is_that_folds_own_run():
    from sklearn.model_selection import StratifiedKFold

    config = TrainConfig(**{**IRIS, "epochs": 2}, kfold=3)
    rows = []
    summary = command.train(config, log=rows.append)
    data = datasets.load("iris")
    rest = datasets.split(data, 0.0, config.test_fraction, config.seed)["train"]  # train+val; test untouched
    folds = StratifiedKFold(3, shuffle=True, random_state=config.seed).split(rest, data.y[rest])
    scores = []
    for k, (a, b) in enumerate(folds):  # each fold trained again on its own, from scikit-learn's indices
        run = Run(config, data, "softmax", rest[a], rest[b], rest[:0], log=lambda _: None)
        _, progress = loop.fit(run, *run.initial_state(), command._QuietBar)
        score = progress.history[-1].val_metric
        assert summary["folds"][k]["val_metric"] == score
        assert score * len(b) == pytest.approx(round(score * len(b)))  # a count over the fold
        scores.append(score)
    assert len(set(scores)) > 1  # three different folds, three different scores
    assert summary["cv_mean"] == pytest.approx(sum(scores) / 3)
    assert summary["cv_std"] == pytest.approx((sum((s - sum(scores) / 3) ** 2 for s in scores) / 3) ** 0.5)
    assert any(r.startswith("3-fold cross-validation: val acc ") for r in rows)


def test_binary_path_trains_breast_cancer_with_binary_cross_entropy():
    rows = []
    summary = command.train(TrainConfig(dataset="breast_cancer", hidden=(16,), epochs=3, batch_size=32),
                            log=rows.append)
    assert summary["task"] == "binary" and summary["loss"] == "binary_cross_entropy"
    assert summary["params"][-1]["W"].shape == (16, 1)  # one logit
    assert summary["test_metric"] > 0.9, summary["test_metric"]  # a linear-ish problem: 3 epochs suffice
    assert any("loss binary_cross_entropy" in r for r in rows)


def test_regression_path_trains_diabetes_and_fits_least_squares_in_closed_form():
    rows = []
    summary = command.train(TrainConfig(dataset="diabetes", hidden=(16,), epochs=5, batch_size=32,
                                        weight_decay=0.01), log=rows.append)
    assert summary["task"] == "regression" and summary["loss"] == "mse"
    assert summary["params"][-1]["W"].shape == (16, 1)
    assert 0.2 < summary["least_squares"]["test_r2"] < 0.6  # the closed form explains part of the variance
    assert summary["test_metric"] > 0.0  # and the MLP does better than predicting the mean
    assert any(r.startswith("closed-form least squares (pure.linear.least_squares): val R² ") for r in rows)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    command.train(TrainConfig(**{**IRIS, "epochs": 1}, checkpoint_dir=ckpt), log=lambda _: None)
    with pytest.raises(TrainError, match="already holds checkpoints .* pass --resume"):
        command.train(TrainConfig(**{**IRIS, "epochs": 1}, checkpoint_dir=ckpt), log=lambda _: None)
    other_model = TrainConfig(**{**IRIS, "epochs": 1, "hidden": (8,)}, checkpoint_dir=ckpt, resume=True)
    with pytest.raises(CheckpointError, match=r"different run: hidden is \[16\] there but \[8\] here"):
        command.train(other_model, log=lambda _: None)
    other_data = TrainConfig(**{**IRIS, "epochs": 1, "dataset": "digits"}, checkpoint_dir=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="dataset is 'iris' there but 'digits' here.*data is 'iris: 150x4"):
        command.train(other_data, log=lambda _: None)


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys, restore_latest):
    ckpt = str(tmp_path / "ckpt")
    argv = ["train", "--dataset", "iris", "--hidden", "16", "--batch-size", "15", "--lr", "1e30",
            "--checkpoint-dir", ckpt, "--checkpoint-every", "1"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("handgrad train: non-finite loss (nan) at step ") and "\n" not in err
    last = int(err.split("the last good checkpoint is step ")[1].split()[0])
    assert int(err.split(" at step ")[1].split()[0]) == last + 1
    config = TrainConfig(dataset="iris", hidden=(16,), batch_size=15, lr=1e30, checkpoint_dir=ckpt,
                                 checkpoint_every=1)
    tree, progress, _ = restore_latest(config, ckpt)
    assert progress.step == last
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(tree.params))


def _truncate(directory):
    """Cuts every file of a checkpoint to half its length, as a disk fault or a partial copy would."""
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            os.truncate(path, os.path.getsize(path) // 2)


def test_resume_skips_a_damaged_newest_checkpoint_names_it_and_fails_cleanly_when_none_reads(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    argv = ["train", "--dataset", "iris", "--hidden", "16", "--batch-size", "15", "--epochs", "2",
            "--checkpoint-dir", str(ckpt)]
    assert main(argv) == 0  # checkpoints at the ends of epochs 1 and 2: steps 7 and 14
    steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
    assert steps == [7, 14]
    _truncate(ckpt / "14")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "skipped a damaged checkpoint: step 14 (moved to damaged-14): " in out, out
    assert "resumed from step 7 (epoch 2, batch 0)" in out and "test acc" in out
    assert "damaged-14" in os.listdir(ckpt)
    for step in sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()):
        _truncate(ckpt / str(step))
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"handgrad train: no checkpoint in {ckpt} reads back whole: step ") and err.count("\n") == 1


def test_an_out_that_fails_after_training_leaves_the_results_and_says_where(tmp_path, restore_latest):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"

    def pull_the_rug(line):  # --out was writable at the start; just before the final write it is a file
        if line.startswith("done in"):
            shutil.rmtree(out)
            out.write_bytes(b"")

    config = TrainConfig(**IRIS, out=str(out), checkpoint_dir=str(ckpt))
    with pytest.raises(command.OutputError) as info:
        command.train(config, log=pull_the_rug)
    message = str(info.value)
    assert message.startswith(f"could not write to --out {out} after training (")
    fallback = message.split("metrics.json and params.npz are in ")[1].split(" instead")[0]
    saved = np.load(os.path.join(fallback, "params.npz"))
    assert saved["0/W"].shape == (4, 16)
    assert f"the last good checkpoint is step 21 in {ckpt}" in message
    tree, progress, _ = restore_latest(config, str(ckpt))
    np.testing.assert_array_equal(saved["0/W"], tree.params[0]["W"])  # the checkpoint restores the same model
    shutil.rmtree(fallback)


def _cli(*args):
    return [sys.executable, "-m", "handgrad.cli", "train", *args]


@pytest.mark.subprocess
def test_kill_9_mid_epoch_then_resume_is_bitwise_identical(tmp_path, restore_latest):
    # digits: 1257 train samples / 32 = 39 steps an epoch; checkpoints at steps 13 and 26 of each epoch and
    # at its end. The victim is killed as soon as a checkpoint inside epoch 2 is started (it may be half written).
    config = TrainConfig(hidden=(16,), epochs=3, batch_size=32, checkpoint_every=13)
    args = ["--hidden", "16", "--epochs", "3", "--batch-size", "32", "--checkpoint-every", "13"]
    command.train(dataclasses.replace(config, checkpoint_dir=str(tmp_path / "whole")), log=lambda _: None)

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
    (whole, whole_progress, _), (again, progress, _) = (restore_latest(config, str(d)) for d in (tmp_path / "whole",
                                                                                                   ckpt))
    assert progress.step == whole_progress.step == 3 * 39
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)  # params, optimizer state and key: bit for bit
    timeless = [[dataclasses.replace(r, examples_per_s=0.0) for r in p.history]
                for p in (whole_progress, progress)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 3


@pytest.mark.subprocess
@pytest.mark.cpu_numerics("two processes of two forced host devices each, compared with a run on the default backend")
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
    config = TrainConfig(dataset="iris", hidden=(16,), epochs=2, batch_size=20)
    single = command.train(config, log=lambda _: None)["params"]
    together = np.load(tmp_path / "params.npz")
    for i, layer in enumerate(single):
        for name, value in layer.items():
            np.testing.assert_allclose(together[f"{i}/{name}"], value, rtol=1e-5, atol=1e-6)
