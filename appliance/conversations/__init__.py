"""Saved conversations: the SQLite store of turns and feedback, and the bridge to the ask pipeline."""
