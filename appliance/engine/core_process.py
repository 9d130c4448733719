"""The engine process: loads the model, then runs `EngineCoreLoop` over one pipe to the server process
(`process_engine.py` starts it). It takes no signals: the server drains its streams on SIGINT/SIGTERM and then
sends Shutdown; a server that dies closes the pipe, and the loop ends at its next read.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection

from appliance.config import EngineConfig
from appliance.engine.core_loop import EngineCoreLoop
from appliance.engine.core_messages import Command
from appliance.engine.engine import LLMEngine
from appliance.engine.info import EngineInfo
from appliance.errors import ApplianceError
from appliance.heap import freeze_serving_engine
from appliance.priority import lower_priority

log = logging.getLogger("appliance.engine")


@dataclass
class Ready:
    """The first message of an engine process that loaded its model."""

    info: EngineInfo


@dataclass
class StartFailed:
    """The first (and last) message of an engine process that could not load its model."""

    message: str


def main(config: EngineConfig, conn: Connection, log_level: str, nice: int = 0) -> None:
    """The engine process's entry point (its first message is Ready or StartFailed); its threads run at the
    nice value `nice`, below the server's (`appliance.priority`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s (engine process): %(message)s")
    lower_priority(nice, whole_process=True)  # before the model loads: every thread it starts inherits it
    try:
        engine = LLMEngine.from_config(config)
    except ApplianceError as exc:
        conn.send(StartFailed(str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the server, which says it in one line
        log.exception("the engine could not start")
        conn.send(StartFailed(f"the engine could not start: {exc}"))
        return
    freeze_serving_engine(engine.runner.wait_for_builds)
    conn.send(Ready(engine.info))
    try:
        EngineCoreLoop(engine, conn.send).run(lambda block: _receive(conn, block))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        log.info("the server process is gone: the engine process stops")


def _receive(conn: Connection, block: bool) -> list[Command]:
    """Every command waiting on the pipe (block: wait for one). Raises EOFError once the server closed it."""
    commands = []
    if block:
        commands.append(conn.recv())
    while conn.poll():
        commands.append(conn.recv())
    return commands
