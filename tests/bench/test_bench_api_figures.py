"""`appliance bench api`'s figures from chunk arrival times (decode rate per stream, summed, and the gaps), and its
client reading them off the wire."""

from __future__ import annotations

import asyncio

import pytest

from appliance.bench.api_load import stream_figures
from appliance.bench.sse_client import stream_completion


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


def _chunked(body: bytes, sizes: int) -> bytes:
    """`body` as a chunked HTTP body of `sizes`-byte chunks (a chunk extension on the first), ended."""
    pieces = [body[i:i + sizes] for i in range(0, len(body), sizes)]
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), b";ext=1" if i == 0 else b"", p) for i, p in enumerate(pieces))
    return out + b"0\r\n\r\n"


async def _served_once(response: bytes, piece: int, close_early: bool = False) -> tuple[list[float], int]:
    """`stream_completion` against a server that answers `response`, `piece` bytes per write."""
    request = bytearray()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request.extend(await reader.readuntil(b"\r\n\r\n"))
        sent = response[:len(response) // 2] if close_early else response
        for start in range(0, len(sent), piece):
            writer.write(sent[start:start + piece])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await stream_completion(f"http://127.0.0.1:{port}", "/v1/chat/completions", {"stream": True})
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    return result


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(("stream", "texts", "tokens"), [(OURS, 2, 2), (PEERS, 1, 1)])
@pytest.mark.parametrize(("sizes", "piece"), [(50, 1), (31, 7), (4096, 4096)])  # HTTP chunks, bytes per write
def test_the_client_reads_a_chunked_stream_however_it_is_cut(stream: bytes, texts: int, tokens: int, sizes: int,
                                                             piece: int) -> None:
    times, got = asyncio.run(_served_once(HEAD + _chunked(stream, sizes), piece))
    assert (len(times), got) == (texts, tokens)
    assert times == sorted(times)


def test_the_client_fails_on_an_error_status_and_on_a_stream_cut_short() -> None:
    refused = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\n\r\n{\"error\": \"busy\"}.."
    with pytest.raises(RuntimeError, match="HTTP 503"):
        asyncio.run(_served_once(refused, 4096))
    with pytest.raises(ConnectionError, match="before its end"):
        asyncio.run(_served_once(HEAD + _chunked(OURS, 40), 16, close_early=True))
