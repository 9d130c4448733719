"""The Ray Serve application: an `Api` ingress (the same FastAPI app as `appliance serve`, its engine a
`ClusterEngine`) bound to an `Engine` deployment of N replicas behind the chosen request router."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from appliance.cluster.board import get_board
from appliance.cluster.engine_replica import EngineReplica
from appliance.cluster.front import ClusterEngine
from appliance.cluster.routers import ROUTERS
from appliance.config import Settings


@dataclass(frozen=True)
class ClusterPlan:
    """How many engine replicas, how requests reach them, and what each may use."""

    replicas: int = 2
    router: str = "affinity"
    threads_per_replica: int = 1  # the engine's intra-op threads (and the CPUs Ray reserves for it)
    min_replicas: int | None = None  # autoscaling between these when both are set
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0
    upscale_delay_s: float = 30.0  # how long the load stays over the target before a replica is added,
    downscale_delay_s: float = 600.0  # and under it before one is removed (Ray Serve's defaults)
    app_name: str = "appliance"

    def autoscaling(self) -> AutoscalingConfig | None:
        if self.min_replicas is None or self.max_replicas is None:
            return None
        return AutoscalingConfig(min_replicas=self.min_replicas, max_replicas=self.max_replicas,
                                 initial_replicas=self.replicas,
                                 target_ongoing_requests=self.target_ongoing_requests,
                                 upscale_delay_s=self.upscale_delay_s, downscale_delay_s=self.downscale_delay_s)


class ApiIngress:
    """The `Api` deployment: HTTP, auth, retrieval, prompt layout and streaming, as in one process."""

    async def __init__(self, engine: DeploymentHandle, settings: Settings, app_name: str) -> None:  # type: ignore[misc]
        from appliance.engine.loader import load_tokenizer

        info = await engine.info.remote()
        tokenizer = await asyncio.to_thread(load_tokenizer, settings.model, settings.data_dir)
        self.settings = settings
        self.front = ClusterEngine(engine, get_board(app_name), info, tokenizer, settings.max_queue)

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Ray Serve's hook: the ASGI app of this replica
        from appliance.server.app import create_app

        return create_app(self.settings, self.front, self.front.info.model_name, freeze=True)


def build_app(settings: Settings, plan: ClusterPlan) -> Application:
    """The bound application `serve.run` starts."""
    config = replace(settings.engine_config(), threads=plan.threads_per_replica)
    autoscaling = plan.autoscaling()
    engine = serve.deployment(
        name="Engine",
        num_replicas=None if autoscaling is not None else plan.replicas,
        autoscaling_config=autoscaling,
        max_ongoing_requests=settings.max_queue,
        ray_actor_options={"num_cpus": plan.threads_per_replica},
        request_router_config=RequestRouterConfig.model_validate({
            "request_router_class": ROUTERS[plan.router], "request_routing_stats_period_s": 1.0,
            "request_routing_stats_timeout_s": 5.0}),
    )(EngineReplica)
    ingress: Any = serve.ingress()(ApiIngress)  # the app is built per replica (`__serve_build_asgi_app__`)
    # Serve admits 5 requests per replica by default: the API takes what one server takes (generation requests
    # up to max_queue, plus room for /health, /metrics and the rest beside them). It runs on the head node, where
    # the data dir (store, indexes, keys) is; engine replicas need only the model.
    api = serve.deployment(name="Api", num_replicas=1, max_ongoing_requests=settings.max_queue + 64,
                           ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}}
                           )(ingress)
    return api.bind(engine.bind(config, settings.max_queue, plan.app_name, settings.warmup_tokens,
                               settings.engine_nice), settings,
                    plan.app_name)
