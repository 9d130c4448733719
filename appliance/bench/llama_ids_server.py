"""llama.cpp's OpenAI server (`python -m llama_cpp.server`), taking prompts as token ids.

Its `/v1/completions` accepts only text, and re-tokenizing a RAG prompt's joined text moves token
boundaries, so the benchmark sends `"\\x00ids:1,2,3"` and this shim turns it back into the id list before
llama.cpp's own `Llama.create_completion` runs (its prompt cache, batching and sampling are untouched).
Run as `python -m appliance.bench.llama_ids_server <llama_cpp.server flags>`.
"""

from __future__ import annotations

from typing import Any

PREFIX = "\x00ids:"


def encode_ids(ids: list[int]) -> str:
    return PREFIX + ",".join(map(str, ids))


def _install() -> None:
    from llama_cpp import Llama

    original = Llama.create_completion

    def create_completion(self: Any, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(prompt, str) and prompt.startswith(PREFIX):
            prompt = [int(t) for t in prompt[len(PREFIX):].split(",")]
        return original(self, prompt, *args, **kwargs)

    Llama.create_completion = create_completion  # type: ignore[method-assign]


if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    _install()
    main()
