"""What crosses between an engine's front (`front.py`, on the server's side) and its step loop (`core_loop.py`,
on a thread or in the engine process): commands one way, events the other. All of it pickles."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.engine.doc_cache.layout import PromptLayout
from appliance.engine.outputs import RequestOutput
from appliance.engine.sampling import SamplingParams
from appliance.engine.snapshot import EngineSnapshot


@dataclass
class AddRequest:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    layout: PromptLayout | None = None
    doc_cache: str | None = None


@dataclass
class AbortRequest:
    request_id: str


@dataclass
class InvalidateDocuments:
    doc_ids: list[str]


@dataclass
class Shutdown:
    """Stop the loop (the engine process then exits)."""


Command = AddRequest | AbortRequest | InvalidateDocuments | Shutdown


@dataclass
class StepOutputs:
    """What one step produced."""

    outputs: list[RequestOutput]


@dataclass
class Rejected:
    """`add_request` refused the request (a RequestError's message)."""

    request_id: str
    message: str


@dataclass
class StepFailed:
    """A step raised: these requests were aborted."""

    request_ids: list[str]
    message: str


@dataclass
class Figures:
    """The engine's figures: sent before the outputs of a step that finished a request (so a client that saw
    its request finish reads figures that count it), every SNAPSHOT_EVERY_S while busy, and when going idle."""

    snapshot: EngineSnapshot


Event = StepOutputs | Rejected | StepFailed | Figures
