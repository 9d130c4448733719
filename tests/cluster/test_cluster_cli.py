"""`appliance serve --replicas N`: what it refuses before starting anything, and the plan it hands Ray Serve."""

from __future__ import annotations

import logging

from typer.testing import CliRunner

from appliance.cli import app
from appliance.cluster.app import ClusterPlan


def test_an_unknown_router_is_refused_with_the_choices() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    result = CliRunner().invoke(app, ["serve", "--replicas", "2", "--router", "random"])
    assert result.exit_code == 1
    assert "unknown router 'random'" in result.output and "round-robin" in result.output
    # a refusal leaves logging as it was (configured, the root logger would write to the runner's closed stream)
    assert (root.handlers, root.level) == (handlers, level)


def test_autoscaling_needs_both_bounds() -> None:
    result = CliRunner().invoke(app, ["serve", "--replicas", "2", "--min-replicas", "1"])
    assert result.exit_code == 1 and "--min-replicas and --max-replicas go together" in result.output


def test_autoscaling_settings_pass_through_to_serve() -> None:
    assert ClusterPlan(replicas=2).autoscaling() is None
    config = ClusterPlan(replicas=2, min_replicas=1, max_replicas=6, target_ongoing_requests=3, upscale_delay_s=5,
                         downscale_delay_s=60).autoscaling()
    assert config is not None
    assert (config.min_replicas, config.max_replicas, config.initial_replicas) == (1, 6, 2)
    assert (config.target_ongoing_requests, config.upscale_delay_s, config.downscale_delay_s) == (3, 5, 60)


def test_the_autoscaling_flags_become_the_plan(monkeypatch) -> None:
    plans: list[ClusterPlan] = []
    monkeypatch.setattr("appliance.cli._serve_cluster", lambda settings, plan, ray_address: plans.append(plan))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(app, ["serve", "--replicas", "2", "--min-replicas", "1", "--max-replicas", "4",
                                          "--target-ongoing", "2", "--upscale-delay", "5", "--downscale-delay", "60"])
    finally:
        root.handlers, root.level = handlers, level  # `serve` configured logging for the server it would run
    assert result.exit_code == 0, result.output
    config = plans[0].autoscaling()
    assert config is not None
    assert (config.min_replicas, config.max_replicas, config.initial_replicas) == (1, 4, 2)
    assert (config.target_ongoing_requests, config.upscale_delay_s, config.downscale_delay_s) == (2, 5, 60)
