"""The search benchmark's table: bare-matmul rows carry no index agreement, and rows a run lacks are left out."""

from benchmarks.retrieval import SEARCH_METHODS, _native_bf16, _search_tables


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
    by_method = {row.split(" | ")[1]: row.split(" | ") for row in rows}
    assert by_method[SEARCH_METHODS["mm"]][7] == "—" and by_method[SEARCH_METHODS["qualcl"]][7] == "1.0000"
    assert by_method[SEARCH_METHODS["faiss"]][5] == "1.00×"  # FAISS is the unit of its own column
    mapped = [line for line in lines if "(memory-mapped)" in line]
    assert len(mapped) == 4 and not any("NumPy" in line for line in mapped)
    assert lines[-1] == "| 10 × 50 | failed (boom) | | | | | | | |"


def test_the_header_says_whether_the_default_search_screened():
    yes, no = {"native_bf16": True}, {"native_bf16": False}
    assert _native_bf16([(1, 2, yes, ""), (1, 3, None, "boom")]) == "yes"
    assert _native_bf16([(1, 2, no, "")]) == "no"
    assert _native_bf16([(1, 2, yes, ""), (1, 3, no, "")]) == "unknown"
    assert _native_bf16([(1, 2, {}, "")]) == "unknown"
