"""The thread that steps the engine computes on the engine's thread count, whatever the process default."""

from __future__ import annotations

import threading

import torch

from appliance.engine.sampling import SamplingParams


def test_the_stepping_thread_uses_the_engines_thread_count(make_engine) -> None:
    engine = make_engine(threads=2)
    before = torch.get_num_threads()
    seen: list[int] = []

    def serve() -> None:
        torch.set_num_threads(1)  # what another thread's set_num_threads leaves as the default of a new thread
        engine.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=2, temperature=0.0))
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    torch.set_num_threads(before)
    assert seen == [2]
