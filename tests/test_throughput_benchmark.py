"""benchmarks/throughput.py's bookkeeping: repeats, ratios and skipped systems (no timing here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
throughput = pytest.importorskip("throughput")


def test_repeats_report_the_median_and_every_run():
    runs = [{"pairs_per_s": r, "wall_s": 1.0, "peak_rss_mib": 9.0} for r in (10.0, 14.0, 11.0)]
    merged = throughput.median_result(runs + [{"error": "killed"}])
    assert merged["pairs_per_s"] == 11.0 and merged["runs"] == [10.0, 14.0, 11.0]
    even = throughput.median_result(runs[:2])
    assert even["pairs_per_s"] == 12.0  # the mean of the middle two
    assert throughput.median_result([{"error": "x"}]) == {"error": "x"}


def test_tables_print_ratios_to_st_and_to_the_raw_forward():
    spec = throughput.Spec(preset="cpu", device="cpu", batch_size=32, warmup=1, steps=2)
    results = {
        "st": {"pairs_per_s": 10.0, "peak_rss_mib": 1.0},
        "qa_lib": {"pairs_per_s": 21.0, "peak_rss_mib": 1.0, "runs": [20.0, 22.0]},
        "encode": {"raw_forward": 100.0, "qa_lib_encode": 96.0, "st_encode": 64.0},
    }
    text = throughput.table(results, spec)
    assert "| qa_lib | 21.0 | 20.0-22.0 | 2.10 |" in text
    assert "| qa_lib_encode | 96.0 | - | 0.96 | 1.50 |" in text


def test_emulated_bf16_is_skipped_with_a_note():
    args = argparse.Namespace(systems="st,st-bf16,qa_lib", grad_cache=False, precision="fp32")
    systems, notes = throughput.system_names(args, gpu=False)
    assert systems == ["st", "qa_lib"] and "st-bf16 skipped" in notes[0]


def test_encoding_rates_take_turns_and_keep_the_median(monkeypatch):
    clock, calls = [0.0], []
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock[0])

    def system(name: str, passes: list[float]):
        def run():
            calls.append(name)
            clock[0] += passes[sum(c == name for c in calls) - 1]

        return run

    rates = throughput.encode_rates(
        {"a": system("a", [9.0, 1.0, 5.0, 2.0]), "b": system("b", [9.0, 4.0, 4.0, 4.0])}, 100, 3
    )
    assert calls == ["a", "b"] * 4  # a warm-up pass each, then the timed passes in turn
    assert rates == {"a": 50.0, "b": 25.0}  # 100 passages / the median of the timed passes
