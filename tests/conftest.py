"""Shared fixtures. Tests run with strict dtype promotion, as in Equinox's suite."""


import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from handgrad import compilation

# The suite compiles ~1000 small programs once each, so compilation is most of its CPU time:
# XLA's CPU backend is asked for quick compilation, as `handgrad verify` does. Tolerances
# are unchanged. Read when JAX starts its backend, which no module does on import.
compilation.ask_quick_compilation()
# One persistent compilation cache for the run, shared by both xdist workers and by the `handgrad train`
# subprocesses the CLI tests start, which compile the same programs as the in-process runs beside them.
_CACHE = os.path.join(tempfile.gettempdir(), f"handgrad-jax-cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

from properties import profiles  # noqa: E402

# handgrad's profiles exist before Hypothesis's plugin reads --hypothesis-profile=handgrad-thorough.
profiles.register()


def pytest_addoption(parser):
    parser.addoption("--scale", action="store_true", help="also run the tests marked scale (the oracle at 10^6)")


def pytest_collection_modifyitems(config, items):
    _fastest_first_under_mutmut(items)
    if not config.getoption("--scale"):
        skip = pytest.mark.skip(reason="the oracle at a million entries: run with --scale")
        for item in items:
            if "scale" in item.keywords:
                item.add_marker(skip)
    on_cpu = [item for item in items if item.get_closest_marker("cpu_numerics")]
    backend = jax.default_backend() if on_cpu else "cpu"  # starts JAX's backend only if a test needs to know it
    if backend != "cpu":
        for item in on_cpu:
            why = item.get_closest_marker("cpu_numerics").args[0]
            item.add_marker(pytest.mark.skip(reason=f"assumes the CPU's numerics, and this is {backend}: {why}"))


def _fastest_first_under_mutmut(items):
    """Under mutmut (docs/mutation.md), a mutant's tests run fastest first, by the durations mutmut measured: with
    -x most mutants then die in seconds, where mutmut's own order can start with the minute-long property."""
    stats = pathlib.Path("mutmut-stats.json")  # mutmut runs the tests in mutants/, beside its stats
    if os.environ.get("MUTANT_UNDER_TEST") and stats.is_file():
        seconds = json.loads(stats.read_text())["duration_by_test"]
        items.sort(key=lambda item: seconds.get(item.nodeid, 0.0))


def pytest_configure(config):
    os.makedirs(_CACHE, exist_ok=True)  # again for each session of one process (mutmut's): the last removed it
    # Unless one is chosen (--hypothesis-profile, or HANDGRAD_PROFILE), the suite runs under handgrad-ci.
    if config.getoption("hypothesis_profile", None) is None:
        profiles.load(os.environ.get("HANDGRAD_PROFILE", "handgrad-ci"))


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist) cleans up
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def strict_promotion(request):
    # optax's own schedules mix int32 counts with Python floats, which strict mode refuses;
    # tests that run optax code say so with @pytest.mark.standard_promotion.
    if request.node.get_closest_marker("standard_promotion"):
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture(autouse=True)
def honest_reports(monkeypatch):
    """Every report check_vjp returns, in every test: no judged entry (or block) shows an error above the
    tolerance it gives, no tolerance passes an error of the entry's own size, and a leaf nothing judged says
    why. (check_vjp calls vjp._check through its module, so wrapping it there sees every call.)"""
    from reference.oracle import vjp

    real = vjp._check

    def checked(*args, **kwargs):
        report = real(*args, **kwargs)
        for leaf in report.leaves:
            if leaf.method == "not judged":  # its entries are counted unchecked, and the report says why
                assert leaf.unchecked, str(report)
            assert leaf.max_rel_err <= leaf.tolerance_rel * (1 + 1e-9) + 1e-300, str(report)
            assert leaf.tolerance_rel <= 1.0, str(report)
        return report

    monkeypatch.setattr(vjp, "_check", checked)


@pytest.fixture
def as_called():
    """Lifting off (``reference.oracle.lifting.disabled()``): the oracle's path for code it cannot raise to float64
    (a host callback), whose thresholds are pinned on functions that lifting would raise."""
    from reference.oracle import lifting

    with lifting.disabled():
        yield


@pytest.fixture
def x64():
    """Enables float64 for one test only (never globally on import)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def on_cpu_devices():
    """``run(script, devices)``: the script in a fresh Python with that many forced CPU devices (the count is
    fixed when JAX starts, so it cannot change in this process); returns the JSON its last line prints."""
    def run(script: str, devices: int) -> dict:
        env = {**os.environ, "JAX_PLATFORMS": "cpu",  # forced host devices, even where a GPU would be the default
               "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"}
        done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])
    return run


@pytest.fixture
def restore_latest():
    """``restore(config, directory=config.checkpoint_dir) -> (tree, progress, skipped)``: the newest checkpoint that
    reads back whole, restored as ``handgrad train --resume`` would."""
    from handgrad.train import command
    from handgrad.train import data as datasets
    from handgrad.train.checkpoints import Checkpoints
    from handgrad.train.run import Run
    from handgrad.train.state import Progress

    def restore(config, directory=None):
        data = datasets.load(config.dataset)
        checkpoints = Checkpoints(directory or config.checkpoint_dir, command.signature(config, data))
        run = Run(config, data, "softmax", *datasets.split(data, 0.1, 0.2, 0).values(), checkpoints=checkpoints)
        tree, record, skipped = checkpoints.restore(run.initial_state()[0])
        return tree, Progress.from_json(record), skipped
    return restore
