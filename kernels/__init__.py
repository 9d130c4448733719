"""Attention and RoPE backends behind one interface (see `kernels.base`)."""

from kernels.base import AttentionBackend, AttentionBatch, available_backends, get_backend, register_backend

__all__ = ["AttentionBackend", "AttentionBatch", "available_backends", "get_backend", "register_backend"]
