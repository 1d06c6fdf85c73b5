"""The search benchmark's table: bare-matmul rows carry no index agreement, and rows a run lacks are left out."""

from benchmarks.retrieval import SEARCH_METHODS, _search_tables


def _timed(names: list[str]) -> dict[str, object]:
    result: dict[str, object] = {"load_before": "1.00", "load_after": "1.00", "faiss_device": "cpu"}
    for i, name in enumerate(names, start=1):
        result |= {f"{name}_best": 0.1 * i, f"{name}_median": 0.1 * i, f"{name}_cpu": 0.2 * i}
        result[f"{name}_agreement"] = None if name.endswith("mm") else 1.0
    return result


def test_bare_matmul_rows_show_no_agreement_and_missing_methods_are_skipped():
    everything = _timed(list(SEARCH_METHODS))
    without_numpy = _timed(["qualcl", "faiss", "dense", "mm"])  # e.g. a CUDA run, or an older result
    lines = _search_tables([(10, 100, everything, ""), (10, 300_000, without_numpy, ""), (10, 50, None, "boom")])
    rows = [line for line in lines[2:] if line.startswith("| 10 × 100 |")]
    assert len(rows) == len(SEARCH_METHODS)
    assert rows[3].split(" | ")[7] == "—" and rows[0].split(" | ")[7] == "1.0000"
    assert rows[1].split(" | ")[5] == "1.00×"  # FAISS is the unit of its own column
    mapped = [line for line in lines if "(memory-mapped)" in line]
    assert len(mapped) == 4 and not any("NumPy" in line for line in mapped)
    assert lines[-1] == "| 10 × 50 | failed (boom) | | | | | | | |"
