"""Retrieval-augmented generation: prompt assembly from stored chunk tokens, citations, the ask pipeline."""
