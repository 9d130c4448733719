"""The API's side of a cluster: an `EngineFront` whose step loops are the `Engine` deployment's replicas.

Each request is one streaming call through the deployment handle (Ray's router picks the replica, reading the
`passages` keyword); its outputs are handed to the front as they arrive, and an abort cancels the call (Ray
then cancels it on the replica, which aborts the request there and frees its blocks). A replica that dies
mid-stream ends that stream with an error; Ray replaces the replica. Figures come from the cluster's board,
per replica (`replicas()`).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import ray
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from appliance.cluster.affinity import passage_id
from appliance.engine.core_messages import AbortRequest, AddRequest, Command, InvalidateDocuments, StepOutputs
from appliance.engine.doc_cache.layout import PromptLayout
from appliance.engine.front import EngineFront
from appliance.engine.info import EngineInfo
from appliance.engine.snapshot import ReplicaReport
from appliance.engine.tokenizer import TextTokenizer
from appliance.errors import ApplianceError, EngineUnavailableError

log = logging.getLogger("appliance.cluster")


def passages_of(layout: PromptLayout | None) -> dict[str, int]:
    """The request's passages as the router weighs them: passage id -> its tokens in the prompt."""
    if layout is None:
        return {}
    return {passage_id(s.doc_id, s.chunk_id): s.length for s in layout.chunks}


def _remote_cause(exc: BaseException) -> BaseException:
    """The exception a replica raised (Ray wraps it in a RayTaskError carrying its traceback's text)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class ClusterEngine(EngineFront):
    REFRESH_EVERY_S = 1.0

    def __init__(self, handle: DeploymentHandle, board: ray.actor.ActorHandle, info: EngineInfo,
                 tokenizer: TextTokenizer, max_queue: int) -> None:
        super().__init__(info, tokenizer, max_queue)
        self._handle = handle.options(stream=True)
        self._board = board
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._reports: list[ReplicaReport] = []
        self._closed = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_forever, name="cluster-board", daemon=True)
        self._refresher.start()

    def replicas(self) -> list[ReplicaReport]:
        """The live replicas' latest reports (about a second old at most)."""
        return list(self._reports)

    def close(self) -> None:
        self._closed.set()
        for task in list(self._calls.values()):
            task.cancel()

    def _send(self, command: Command) -> None:
        if isinstance(command, AddRequest):
            task = asyncio.get_running_loop().create_task(self._stream(command))
            self._calls[command.request_id] = task
        elif isinstance(command, AbortRequest):
            call = self._calls.pop(command.request_id, None)
            if call is not None:
                call.cancel()
        elif isinstance(command, InvalidateDocuments):
            self._board.invalidate.remote(command.doc_ids)

    async def _stream(self, command: AddRequest) -> None:
        rid = command.request_id
        response = self._handle.generate.remote(command, passages=passages_of(command.layout))
        assert isinstance(response, DeploymentResponseGenerator)  # the handle streams
        try:
            async for out in response:
                self._on_event(StepOutputs([out]))
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every failure ends the stream with an error the client sees
            cause = _remote_cause(exc)
            if isinstance(cause, ApplianceError):
                self._fail([rid], type(cause)(str(cause)))
            else:
                log.warning("request %s: the engine replica failed: %s", rid, cause)
                self._fail([rid], EngineUnavailableError(
                    f"the engine replica serving this request stopped ({type(cause).__name__}); retry"))
        finally:
            self._calls.pop(rid, None)

    def _refresh_forever(self) -> None:
        while not self._closed.wait(self.REFRESH_EVERY_S):
            try:
                self._reports = ray.get(self._board.replicas.remote(), timeout=5)
            except Exception as exc:  # noqa: BLE001 - figures go stale, serving goes on
                log.warning("could not read the cluster board: %s", exc)
