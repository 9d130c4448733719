"""The engine on a thread (`AsyncEngine`): should its loop stop on an error, every stream in flight ends with
an error and new requests are refused, never left waiting for a thread that is gone; a cluster replica so
stopped fails Ray Serve's health check (and is replaced)."""

from __future__ import annotations

import asyncio

import pytest

from appliance.cluster.engine_replica import EngineReplica
from appliance.engine.async_engine import AsyncEngine
from appliance.engine.sampling import SamplingParams
from appliance.errors import EngineUnavailableError


def test_a_loop_that_stops_ends_every_stream_and_refuses_new_requests(make_engine) -> None:
    engine = make_engine()

    def broken(doc_id: str) -> int:  # e.g. a document cache whose files another process removed mid-read
        raise RuntimeError(f"cannot invalidate {doc_id}")

    engine.invalidate_document = broken
    front = AsyncEngine(engine)
    prompt = front.tokenizer.encode("Tell me a very long story about the sea.")
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def stream_until_the_loop_stops() -> int:
        outputs = 0
        async for _ in front.generate(prompt, long):
            outputs += 1
            if outputs == 2:
                front.invalidate_documents(["doc-1"])
        return outputs

    with pytest.raises(EngineUnavailableError, match="cannot invalidate doc-1"):
        asyncio.run(asyncio.wait_for(stream_until_the_loop_stops(), 60))
    assert front.down is not None and front.num_in_flight == 0
    with pytest.raises(EngineUnavailableError):
        asyncio.run(anext(front.generate(prompt, long)))

    replica = EngineReplica.__new__(EngineReplica)  # Ray builds replicas; the health check reads only the front
    replica.front = front
    with pytest.raises(RuntimeError, match="cannot invalidate doc-1"):
        replica.check_health()
