"""The synthetic-dataset cache: one copy per parameter set, shared by concurrent processes, overridable."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

from qualcl.data.synthetic import CACHE_ENV, cache_dir, cached_fundus_dataset


def _generate(cache: str, queue) -> None:  # a separate process
    queue.put(str(cached_fundus_dataset(6, size=64, seed=3, progress=False, cache=cache)))


def test_concurrent_processes_share_one_complete_copy(tmp_path):
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_generate, args=(str(tmp_path), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    folders = {queue.get(timeout=5) for _ in workers}
    assert len(folders) == 1
    folder = Path(folders.pop())
    truth = json.loads((folder / "ground_truth.json").read_text())
    assert len(truth["images"]) == 6
    assert [p.name for p in (tmp_path / "synthetic").iterdir() if p.is_dir()] == [folder.name]


def test_other_settings_get_their_own_folder_and_the_location_is_overridable(tmp_path, monkeypatch):
    a = cached_fundus_dataset(4, size=64, seed=0, progress=False, cache=tmp_path)
    b = cached_fundus_dataset(4, size=64, seed=1, progress=False, cache=tmp_path)
    assert a != b and a.parent == b.parent == tmp_path / "synthetic"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "qualcl"
