"""Retrieval: parse, chunk, embed and index document collections; hybrid search over them.

The one entry point for the server and the CLI is `retrieval.service.RetrievalService`.
"""
