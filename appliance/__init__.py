"""RAG appliance: ingestion, hybrid search and a document-aware LLM engine in one process."""

__version__ = "0.1.0"
