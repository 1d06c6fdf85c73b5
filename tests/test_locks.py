"""The one file lock: held for its block, refused without waiting while another open holds it, then free."""

import errno
from unittest import mock

import pytest

from qualcl._locks import file_lock


def test_a_held_lock_refuses_a_second_holder_that_does_not_wait_and_is_free_after(tmp_path):
    path = tmp_path / "x.lock"
    with file_lock(path):
        assert path.is_file()  # created when missing
        with pytest.raises(BlockingIOError), file_lock(path, wait=False):
            pass
    with file_lock(path, wait=False), pytest.raises(BlockingIOError), file_lock(path, wait=False):
        pass
    with file_lock(path, wait=False):
        pass


def test_a_file_system_without_locks_runs_unguarded_and_other_errors_surface(tmp_path):
    import fcntl

    for code, raised in ((errno.ENOLCK, None), (errno.EBADF, OSError)):
        with mock.patch.object(fcntl, "flock", side_effect=OSError(code, "no")):
            if raised is None:
                with file_lock(tmp_path / "y.lock", wait=False):
                    pass
            else:
                with pytest.raises(raised), file_lock(tmp_path / "y.lock"):
                    pass
