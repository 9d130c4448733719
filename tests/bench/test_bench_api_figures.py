"""`appliance bench api`'s figures from chunk arrival times: decode rate per stream, summed, and the gaps."""

from __future__ import annotations

import pytest

from appliance.bench.api_load import stream_figures


def test_rates_sum_over_streams_and_gaps_are_per_stream() -> None:
    # stream a: 5 tokens, chunks 0.1 s apart (10 tok/s); stream b: 3 tokens 0.5 s apart (2 tok/s), starting later
    a = [0.0, 0.1, 0.2, 0.3, 0.4]
    b = [10.0, 10.5, 11.0]
    figures = stream_figures([a, b], [5, 3])
    assert figures["tok_s"] == pytest.approx(12.0)
    # gaps: 4 of 100 ms and 2 of 500 ms; never the 9.6 s between two streams
    assert figures["itl_p50_ms"] == pytest.approx(100.0)
    assert figures["itl_p99_ms"] == pytest.approx(500.0)


def test_a_stream_with_one_chunk_adds_no_rate() -> None:
    figures = stream_figures([[1.0], [0.0, 0.25]], [1, 2])
    assert figures["tok_s"] == pytest.approx(4.0)
