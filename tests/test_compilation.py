"""Quick compilation (handgrad.compilation) is asked for unless the user chose XLA's flags."""

import os

from handgrad import compilation


def test_the_quick_flags_unless_the_user_set_their_own(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    compilation.ask_quick_compilation()
    assert os.environ["XLA_FLAGS"] == compilation.QUICK
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    compilation.ask_quick_compilation()
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
