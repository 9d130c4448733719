"""Cluster fixtures: the ingested data dir of the server tests, shared with them."""

from tests.server.conftest import rag_data_dir  # noqa: F401 - a fixture, found by name
