"""`appliance bench api`'s figures from chunk arrival times: decode rate per stream, summed, and the gaps."""

from __future__ import annotations

import json

import pytest

from appliance.bench.api_load import TEXT_DELTA, USAGE, sse_events, stream_figures


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


# what the two servers send: ours (json.dumps spacing) and llama-server's (compact), a role chunk first
OURS = (b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
        b'data: {"choices": [{"index": 0, "delta": {"content": "Once"}}], "usage": null}\n\n'
        b'data: {"choices": [{"index": 0, "delta": {"content": "\\" upon"}}]}\n\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}\n\ndata: [DONE]\n\n')
PEERS = (b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\n'
         b'data: {"choices":[{"delta":{"content":" a"}}]}\n\n'
         b'data: {"choices":[],"usage":{"completion_tokens":1,"prompt_tokens":38}}\n\ndata: [DONE]\n\n')


@pytest.mark.parametrize(("stream", "texts", "tokens"), [(OURS, 2, 2), (PEERS, 1, 1)])
@pytest.mark.parametrize("piece", [1, 7, 4096])  # bytes per network read: split anywhere, or all at once
def test_text_chunks_and_usage_are_found_however_the_stream_is_split(stream: bytes, texts: int, tokens: int,
                                                                     piece: int) -> None:
    buffer = bytearray()
    events: list[bytes] = []
    for start in range(0, len(stream), piece):
        buffer += stream[start:start + piece]
        events += sse_events(buffer)
    assert not buffer.strip()  # nothing complete left behind
    assert sum(1 for e in events if TEXT_DELTA.search(e)) == texts
    usage = [json.loads(e.removeprefix(b"data: "))["usage"] for e in events if USAGE.search(e)]
    assert [u["completion_tokens"] for u in usage] == [tokens]
