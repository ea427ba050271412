from __future__ import annotations

from qa_lib.metrics import METRIC_KEYS
from qa_lib.reporting import format_demo, format_table, markdown_table, versions


def test_markdown_table_fills_missing_cells_with_a_dash():
    text = markdown_table({"a": {"x": "1"}, "b": {"x": "2", "y": "3"}}, ["x", "y"], "name")
    assert text.splitlines() == [
        "| name | x | y |",
        "|---|---|---|",
        "| a | 1 | - |",
        "| b | 2 | 3 |",
    ]


def test_format_table_rounds_to_three_decimals_in_metric_order():
    text = format_table({"m": {"recall@1": 0.12345, "mrr@10": 1.0}})
    header, _, row = text.splitlines()
    assert header == "| model | " + " | ".join(METRIC_KEYS) + " |"
    assert row.startswith("| m | 0.123 | - | - | 1.000 |")


def test_format_demo_and_versions():
    assert format_demo([("answer", 0.5), ("q", -1.25)]) == "     0.500  answer\n    -1.250  q"
    assert {"python", "torch", "transformers", "qa_lib"} <= set(versions())
