import os
import signal
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# Generated datasets go to a cache of the test session (shared by its runs and its DDP processes), not ~/.cache.
os.environ.setdefault("QUALCL_CACHE", tempfile.mkdtemp(prefix="qualcl-test-cache-"))
# Keep runs reproducible and quick on 2-core CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# CI draws the same examples on every run (a landing never hangs on a rare draw); "dev" explores new ones.
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _check_every_saved_figure() -> None:
    """Every figure the tests save (every recipe's plots at smoke size) must have no cut-off text and no empty axes."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # a core install without the recipe extras
        return
    from figures import figure_problems

    save = Figure.savefig

    def checked(self, fname, *args, **kwargs):
        problems = figure_problems(self)
        if problems:
            raise AssertionError(f"{fname}: {'; '.join(problems)}")
        return save(self, fname, *args, **kwargs)

    Figure.savefig = checked


_check_every_saved_figure()


@pytest.fixture(autouse=True)
def _default_sigint():
    """Each test starts with Python's Ctrl-C handler (a run stopped by KeyboardInterrupt leaves Lightning's SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
