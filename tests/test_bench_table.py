"""The table every benchmark prints (bench/envinfo.py)."""

from bench.envinfo import format_table


def test_table_has_a_row_per_result_and_readable_cells():
    rows = [{"spec": "Flat", "recall": 1.0, "p50": 12.345, "note": None},
            {"spec": "IVF1024_HNSW32,SQ8", "recall": 0.97312, "p50": 1234.5, "note": "x"}]
    text = format_table(rows, [("spec", lambda r: r["spec"]), ("recall@10", lambda r: r["recall"]),
                               ("p50 ms", lambda r: r["p50"]), ("note", lambda r: r["note"])])
    lines = text.splitlines()
    assert lines[0] == "| spec | recall@10 | p50 ms | note |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| Flat | 1.0 | 12.3 | - |"
    assert lines[3] == "| IVF1024_HNSW32,SQ8 | 0.9731 | 1,234.5 | x |"
