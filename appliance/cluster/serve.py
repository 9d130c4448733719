"""`appliance serve --replicas N`: start (or join) a Ray cluster, run the Serve application on the configured
host and port, and stop it on SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import ray
from ray import serve

from appliance.cluster.app import ClusterPlan, build_app
from appliance.cluster.board import BOARD_NAMESPACE, ClusterBoard, board_name, get_board
from appliance.config import Settings

log = logging.getLogger("appliance.cluster")


def start_cluster(settings: Settings, plan: ClusterPlan, ray_address: str | None = None) -> None:
    """Start Ray (a local cluster sized for the plan, or join `ray_address`), the board, Serve's HTTP proxy on
    the settings' host and port, and the application; returns once every replica is up."""
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, logging_level=logging.WARNING)
        else:
            cpus = max(os.cpu_count() or 1, plan.replicas * plan.threads_per_replica)
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    board: Any = ClusterBoard  # a Ray actor class (its `options` are Ray's)
    board.options(name=board_name(plan.app_name), namespace=BOARD_NAMESPACE, get_if_exists=True,
                  lifetime="detached").remote()  # stop_cluster kills it
    # one HTTP entry point, on the head node beside the Api replica
    serve.start(proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port})
    serve.run(build_app(settings, plan), name=plan.app_name, route_prefix="/")


def stop_cluster(plan: ClusterPlan) -> None:
    """Delete the application (its replicas drain and close their engines) and the board."""
    serve.delete(plan.app_name)
    ray.kill(get_board(plan.app_name))


def serve_cluster(settings: Settings, plan: ClusterPlan, ray_address: str | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then stop the application (and the local Ray cluster this started)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        start_cluster(settings, plan, ray_address)
        log.info("serving on http://%s:%d with %d engine replicas (router: %s)", settings.host, settings.port,
                 plan.replicas, plan.router)
        stop.wait()
        log.info("stopping the cluster application")
        stop_cluster(plan)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ray_address is None:
            serve.shutdown()
            ray.shutdown()
