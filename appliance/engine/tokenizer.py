"""Tokenizer and chat template, from a GGUF file or a Hugging Face folder.

The engine, the chunker and the prompt assembler all use this one object, so the token ids stored
with a chunk at ingestion are exactly the ids the engine later reads (the KV cache keys on them).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from appliance.errors import ModelLoadError

# End-of-turn markers of the chat formats we know; any that exist in the vocabulary stop generation.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "</s>")

# GGUF `tokenizer.ggml.pre` names -> pre-tokenizer regexes (as llama.cpp's vocabulary loader uses them).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)



def _gpt2_byte_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character each byte is written as in a byte-level vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF_CHAR = _gpt2_byte_table()


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


class TextTokenizer:
    """Encode/decode text and render chat prompts for one model.

    Contract: `encode` treats its text as plain text — never adds BOS/EOS and never turns text such as
    "<|im_end|>" into a control token (document and user text cannot forge turns); `apply_chat_template`
    returns the ids of the whole prompt, the template's own special tokens parsed as such.
    """

    def __init__(self, tok: Tokenizer, chat_template: str | None, bos_token: str | None,
                 eos_token: str | None, add_bos: bool) -> None:
        self._tok = tok
        self._plain = copy.deepcopy(tok)
        self._plain.encode_special_tokens = True
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos = add_bos
        vocab = tok.get_vocab()
        self.vocab_size = tok.get_vocab_size()
        self.bos_token_id = vocab.get(bos_token) if bos_token else None
        stops = {vocab[t] for t in _END_OF_TURN if t in vocab}
        if eos_token and eos_token in vocab:
            stops.add(vocab[eos_token])
        self.stop_token_ids: frozenset[int] = frozenset(stops)
        self._template = (
            ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(chat_template)
            if chat_template else None
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as plain text, without BOS/EOS."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_template(self, text: str) -> list[int]:
        """Token ids of template text, whose special tokens (e.g. `<|im_start|>`) are parsed as such."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def tokenizer_json(self) -> str:
        """The Hugging Face `tokenizer.json` of this tokenizer (what llguidance reads)."""
        return self._tok.to_str()

    @property
    def renders_tools(self) -> bool:
        """The chat template lists a request's `tools` itself (else the caller describes them in a message)."""
        return bool(self.chat_template and "tools" in self.chat_template)

    @functools.cached_property
    def vocabulary_encoding(self) -> str:
        """How the vocabulary's token strings spell bytes: `byte_level` (GPT-2's byte-to-character table),
        `byte_fallback` (SentencePiece: `<0xAB>` tokens and `▁` for a space) or `raw` (the text itself)."""
        decoder = json.loads(self.tokenizer_json()).get("decoder") or {}
        kinds = {d.get("type") for d in decoder.get("decoders", [decoder])}
        if "ByteLevel" in kinds:
            return "byte_level"
        return "byte_fallback" if "ByteFallback" in kinds else "raw"

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a token can hold part of a UTF-8 character; OpenAI's `bytes`)."""
        piece = self._tok.id_to_token(token_id) or ""
        if self.vocabulary_encoding == "byte_level" and all(ch in _BYTE_OF_CHAR for ch in piece):
            return bytes(_BYTE_OF_CHAR[ch] for ch in piece)
        if self.vocabulary_encoding == "byte_fallback":
            if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode()
        return self.decode([token_id], skip_special_tokens=False).encode()

    def render_chat(self, messages: list[ChatMessage], add_generation_prompt: bool = True,
                    tools: list[dict[str, Any]] | None = None) -> str:
        """The chat template applied to `messages` (and `tools`, for a template that renders them), as text."""
        if self._template is None:
            body = "".join(f"{m.role}: {m.content}\n" for m in messages)
            return body + ("assistant: " if add_generation_prompt else "")
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def apply_chat_template(self, messages: list[ChatMessage], add_generation_prompt: bool = True,
                            tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt token ids for a chat (BOS added when the model wants it and the template did not).

        The template is rendered around placeholders; its own text is encoded with special tokens and each
        message's content as plain text.
        """
        marks = [f"\x00{i}\x00" for i in range(len(messages))]
        text = self.render_chat([ChatMessage(m.role, mark) for m, mark in zip(messages, marks, strict=True)],
                                add_generation_prompt, tools)
        ids: list[int] = []
        for piece in re.split("(\x00\\d+\x00)", text):
            if piece.startswith("\x00") and piece.endswith("\x00") and len(piece) > 2:
                ids += self.encode(messages[int(piece[1:-1])].content)
            elif piece:
                ids += self.encode_template(piece)
        if self.add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids


def tokenizer_from_gguf_fields(fields: dict[str, Any]) -> TextTokenizer:
    """Build the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata (BPE vocabularies)."""
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelLoadError(f"GGUF tokenizer type {kind!r} is not supported (only BPE 'gpt2' vocabularies); "
                             "use a Hugging Face folder with tokenizer.json instead")
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = fields.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "qwen2":
        regex = _QWEN2_REGEX
    elif pre in ("llama3", "llama-bpe", "smaug-bpe"):
        regex = _LLAMA3_REGEX
    else:
        regex = _GPT2_REGEX
    split = pre_tokenizers.Split(Regex(regex), behavior="isolated")
    steps = [split, byte_level]
    if pre == "smollm":  # SmolLM splits every digit on its own before the GPT-2 regex
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    # Control (3) and user-defined (4) tokens are matched whole in text, never split by BPE.
    specials = [AddedToken(t, special=(ty == 3), normalized=False) for t, ty in zip(tokens, types, strict=False)
                if ty in (3, 4)]
    tok.add_tokens(specials)

    def named(key: str) -> str | None:
        idx = fields.get(key)
        return tokens[idx] if isinstance(idx, int) and 0 <= idx < len(tokens) else None

    return TextTokenizer(tok, fields.get("tokenizer.chat_template"), named("tokenizer.ggml.bos_token_id"),
                         named("tokenizer.ggml.eos_token_id"), bool(fields.get("tokenizer.ggml.add_bos_token")))


def tokenizer_from_hf_folder(folder: Path) -> TextTokenizer:
    """Load `tokenizer.json` (+ `tokenizer_config.json` for the chat template and special tokens)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()

    def token_text(value: Any) -> str | None:
        return value.get("content") if isinstance(value, dict) else value

    return TextTokenizer(tok, template, token_text(config.get("bos_token")), token_text(config.get("eos_token")),
                         bool(config.get("add_bos_token", False)))


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting multi-byte characters."""

    def __init__(self, tokenizer: TextTokenizer, prompt_tail: list[int]) -> None:
        self._tok = tokenizer
        self._ids = list(prompt_tail[-4:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (possibly empty)."""
        self._ids.append(token_id)
        before = self._tok.decode(self._ids[self._prefix:self._read])
        after = self._tok.decode(self._ids[self._prefix:])
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]
