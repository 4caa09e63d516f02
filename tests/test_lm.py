"""`handgrad train --model transformer`: the model's gradient through pure's ops against jax.grad of the plain
reference, the byte data and its split, the bigram baseline by hand, the run's JSON, bitwise resume after stops
(the fault tests' own kill_at and disk_fills_at_save), a damaged or foreign checkpoint, and two processes."""

import dataclasses
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_faults import Killed, disk_fills_at_save, kill_at  # noqa: F401  (fixtures, used by name)

import pure.transformer
import reference.transformer
from handgrad.cli import main
from handgrad.train import lm, lm_model, text
from handgrad.train.checkpoints import CheckpointError, Checkpoints
from handgrad.train.config import LMConfig

TINY = dict(d_model=16, heads=2, layers=1, seq_len=16, steps=20, batch_size=8, eval_every=10, val_batches=2,
            sample=0, plots=False)
TINY_ARGS = ["train", "--model", "transformer", "--d-model", "16", "--heads", "2", "--layers", "1", "--seq-len", "16",
             "--steps", "20", "--batch-size", "8", "--eval-every", "10", "--val-batches", "2", "--sample", "0"]


def _leaves_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _timeless(history):
    return [dataclasses.replace(row, seconds=0.0) for row in history]


# ---------------------------------------------------------------------------------------------------- the model
def test_gradient_through_pure_ops_equals_jax_grad_of_the_plain_reference():
    params = pure.transformer.init_transformer(jax.random.key(0), 256, 16, 2, 2, 12)
    rng = np.random.default_rng(0)  # every leaf moved off its initial value, so biases, gamma and beta matter
    params = jax.tree_util.tree_map(lambda p: p + jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype), params)
    ids = jnp.asarray(rng.integers(0, 256, (3, 13)), jnp.int32)
    loss, grads = jax.jit(jax.value_and_grad(pure.transformer.lm_loss))(params, ids)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference.transformer.lm_loss))(params, ids)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
    for path, g, r in zip(paths, jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads), strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype, path
        assert float(jnp.max(jnp.abs(r))) > 0, path  # every parameter is reached: a test that can fail
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(r))), err_msg=path)


def test_a_position_sees_only_the_bytes_before_it():
    params = pure.transformer.init_transformer(jax.random.key(1), 256, 16, 2, 1, 8)
    ids = jnp.arange(8, dtype=jnp.int32)[None]
    changed = ids.at[0, 5].set(200)
    a, b = pure.transformer.transformer_logits(params, ids), pure.transformer.transformer_logits(params, changed)
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
    assert not np.allclose(a[0, 5:], b[0, 5:])


# ----------------------------------------------------------------------------------------------------- the data
def test_the_split_is_every_tenth_file_by_name_and_the_corpus_is_the_same_twice():
    names = [f"m{i:02d}.py" for i in range(25)]
    train, val = text.split_files(names[::-1])
    assert val == ["m09.py", "m19.py"] and train == [n for n in names if n not in val]
    a, b = text.stdlib(), text.stdlib()
    assert a.sha256 == b.sha256 and a.train_files == b.train_files and np.array_equal(a.val, b.val)
    assert list(a.val_files) == sorted(a.train_files + a.val_files)[9::10]
    record = a.describe()
    sizes = [os.path.getsize(os.path.join(a.directory, n)) for n in a.train_files]
    assert record["train_bytes"] == sum(sizes) and record["python"].startswith("3.")
    first = pathlib.Path(a.directory, a.val_files[0]).read_bytes()
    assert bytes(a.val[:len(first)]) == first


def test_a_steps_batch_depends_only_on_the_seed_and_the_step():
    corpus = text.stdlib()
    starts = text.batch_starts(3, 17, 8, corpus.train.size, 33)
    np.testing.assert_array_equal(starts, text.batch_starts(3, 17, 8, corpus.train.size, 33))
    assert not np.array_equal(starts, text.batch_starts(3, 18, 8, corpus.train.size, 33))
    assert not np.array_equal(starts, text.batch_starts(4, 17, 8, corpus.train.size, 33))
    rows = text.windows(corpus.train, starts, 33)
    assert rows.shape == (8, 33) and rows.dtype == np.int32
    assert bytes(rows[2].astype(np.uint8)) == bytes(corpus.train[starts[2]:starts[2] + 33])


def test_the_bigram_baseline_on_a_tiny_text_equals_a_hand_computation():
    a, b = ord("a"), ord("b")
    log_probs = text.bigram_log_probs(np.frombuffer(b"abab", np.uint8))
    # pairs ab, ba, ab: c(a,b) = 2 of c(a) = 2, c(b,a) = 1 of c(b) = 1; add-one over 256 bytes
    assert math.isclose(np.exp(log_probs[a, b]), 3 / 258) and math.isclose(np.exp(log_probs[b, a]), 2 / 257)
    assert math.isclose(np.exp(log_probs[ord("z"), a]), 1 / 256)  # a byte never seen: uniform
    bits = text.bigram_bits(log_probs, np.array([[a, b, a], [b, b, b]]))
    hand = -(math.log2(3 / 258) + math.log2(2 / 257) + 2 * math.log2(1 / 257)) / 4
    assert math.isclose(bits, hand, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------- the command
def test_train_transformer_writes_the_json_the_params_and_the_plot(tmp_path, capsys):
    assert main([*TINY_ARGS, "--sample", "40", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train bpc" in out and "the bigram baseline" in out and "sample (40 bytes at temperature 0.8" in out
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["model"] == "transformer" and record["processes"] == 1 and record["config"]["steps"] == 20
    data = record["data"]
    assert data["python"] and len(data["sha256"]) == 64 and data["val_files"] and data["train_bytes"] > 10**6
    assert [row["step"] for row in record["history"]] == [10, 20]
    assert record["final_train_loss"] == record["history"][-1]["train_loss"] > 0
    assert math.isclose(record["val_bits_per_char"], record["val_loss"] / math.log(2))
    assert 2 < record["bigram_val_bits_per_char"] < 8 and isinstance(record["beats_bigram"], bool)
    assert len(record["sample"]) == 40 and all(c.isprintable() or c in "\n\t" for c in record["sample"])
    params = np.load(tmp_path / "params.npz")
    assert params["blocks/0/qkv/W"].shape == (16, 3, 2, 8) and params["embed"].shape == (256, 16)
    assert (tmp_path / "bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lm_model.programs(LMConfig(**TINY).trajectory()).step._cache_size() == 1  # 20 steps, one compile


@pytest.mark.parametrize("argv, expected", [
    (["--hidden", "16"], "--hidden is not an option of --model transformer"),
    (["--heads", "3"], "--heads 3 must divide --d-model 16"),
    (["--seq-len", "0"], "--seq-len must be ≥ 1, got 0"),
    (["--processes", "2", "--coordinator", "127.0.0.1:1"], "--processes starts its own coordinator; it does not "
                                                           "combine with --coordinator"),
])
def test_bad_options_are_one_line_and_exit_2(argv, expected, capsys):
    assert main([*TINY_ARGS, *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"handgrad train: {expected}\n"


def test_a_non_finite_loss_names_the_step_and_exits_3(capsys):
    assert main([*TINY_ARGS, "--lr", "1e30"]) == 3
    err = capsys.readouterr().err
    assert err == "handgrad train: non-finite loss (nan) at step 2; training stopped, no checkpoint was written\n"


def test_an_mlp_refuses_a_transformer_option(capsys):
    assert main(["train", "--d-model", "8"]) == 2
    assert capsys.readouterr().err == "handgrad train: --d-model is not an option of --model mlp\n"


# ------------------------------------------------------------------------------------- checkpoints and faults
def _final_state(config, directory):
    """The newest checkpoint in ``directory``, every array of it, as --resume would read it."""
    corpus = text.stdlib()
    run = lm.LMRun(config, corpus, log=lambda _: None,
                   checkpoints=Checkpoints(directory, lm.signature(config, corpus)))
    return run.restored()


def test_a_run_stopped_as_by_kill_9_resumes_to_the_same_bits(tmp_path, kill_at):  # noqa: F811
    whole = LMConfig(**TINY, checkpoint_every=5, checkpoint_dir=str(tmp_path / "whole"))
    moments = []
    expected = lm.train(whole, log=lambda _: None, at=lambda moment, step: moments.append((moment, step)))
    assert {m for m, _ in moments} == {"stretch", "evaluate", "checkpoint"}
    killed = dataclasses.replace(whole, checkpoint_dir=str(tmp_path / "killed"))
    for i, point in enumerate([("write", 10), ("evaluate", 20), ("stretch", 20)]):  # a torn write among them
        with pytest.raises(Killed):
            lm.train(dataclasses.replace(killed, resume=i > 0), log=lambda _: None, at=kill_at(point))
    lines = []
    resumed = lm.train(dataclasses.replace(killed, resume=True), log=lines.append)
    assert "resumed from step 15 in " in "\n".join(lines)
    _leaves_equal(expected["params"], resumed["params"])
    assert _timeless(expected["history"]) == _timeless(resumed["history"])
    (state, record), (again, again_record) = _final_state(whole, whole.checkpoint_dir), _final_state(
        killed, killed.checkpoint_dir)
    _leaves_equal(state, again)  # params, AdamW's moments and count, the key: bit for bit
    assert record["step"] == again_record["step"] == 20
    assert not [n for n in os.listdir(killed.checkpoint_dir) if "tmp" in n]


def test_a_damaged_newest_checkpoint_is_skipped_and_a_foreign_one_refused(tmp_path):
    config = LMConfig(**TINY, checkpoint_every=10, checkpoint_dir=str(tmp_path))
    expected = lm.train(config, log=lambda _: None)
    for root, _, files in os.walk(tmp_path / "20"):  # cut short, as a disk fault or a partial copy would
        for name in files:
            os.truncate(os.path.join(root, name), os.path.getsize(os.path.join(root, name)) // 2)
    lines = []
    resumed = lm.train(dataclasses.replace(config, resume=True), log=lines.append)
    log = "\n".join(lines)
    assert "skipped a damaged checkpoint: step 20 (moved to damaged-20)" in log and "resumed from step 10" in log
    _leaves_equal(expected["params"], resumed["params"])
    with pytest.raises(CheckpointError, match="different run: d_model is 16 there but 32 here"):
        lm.train(dataclasses.replace(config, resume=True, d_model=32), log=lambda _: None)


def test_a_full_disk_at_a_checkpoint_is_one_warning_and_exit_1(tmp_path, capsys, disk_fills_at_save):  # noqa: F811
    disk_fills_at_save(2)
    argv = [*TINY_ARGS, "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "5", "--out",
            str(tmp_path / "out"), "--no-plots"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert sum(line.startswith("warning: could not write the checkpoint of step 10") for line in
               captured.out.splitlines()) == 1
    assert captured.err.count("\n") == 1 and "No space left on device" in captured.err
    assert (tmp_path / "out" / "params.npz").exists()
    left = os.listdir(tmp_path / "ckpt")
    assert [n for n in left if n.isdigit()] == ["5"] and not [n for n in left if "tmp" in n]  # the last good one


# ----------------------------------------------------------------------------------------------- processes
@pytest.mark.subprocess
@pytest.mark.cpu_numerics("two CPU processes compared with a run on the default backend")
def test_two_processes_end_at_the_loss_of_one(tmp_path, capfd):
    assert main([*TINY_ARGS, "--processes", "2", "--out", str(tmp_path)]) == 0
    assert "2 device(s) in 2 process(es)" in capfd.readouterr().out  # process 0 prints, to this test's stdout
    together = json.loads((tmp_path / "metrics.json").read_text())
    assert together["processes"] == 2 and together["devices"] == 2
    alone = lm.train(LMConfig(**TINY), log=lambda _: None)
    for key in ("final_train_loss", "val_loss"):
        assert math.isclose(together[key], alone[key], rel_tol=1e-5), (key, together[key], alone[key])
