"""POST /tokenize and /detokenize (vLLM's), for clients that count tokens before they send a prompt.

`/tokenize` takes a `prompt` (plain text, as `/v1/completions` encodes it, which adds no BOS;
`add_special_tokens` adds the model's BOS when it wants one) or chat `messages` (the chat template, as
`/v1/chat/completions` applies it) and returns `{count, max_model_len, tokens}` (`token_strs` too with
`return_token_strs`). `/detokenize` turns token ids back into text (special tokens kept); an id outside the
vocabulary is a 400.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import Field, model_validator

from appliance.engine.tokenizer import ChatMessage
from appliance.server.deps import AppState, Principal, current_principal, engine_of, get_state
from appliance.server.errors import ApiError
from appliance.server.schemas import ChatMessageIn, RequestModel

router = APIRouter()


class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = Field(None, max_length=200_000)
    messages: list[ChatMessageIn] | None = Field(None, min_length=1, max_length=512)
    add_special_tokens: bool = True  # prompt only: the model's BOS, when it wants one
    add_generation_prompt: bool = True  # messages only: end with the assistant's header
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int] = Field(max_length=200_000)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, state: AppState = Depends(get_state),
                   _: Principal = Depends(current_principal)) -> dict:
    engine = engine_of(state)
    tokenizer = engine.tokenizer
    if body.messages is not None:
        tokens = tokenizer.apply_chat_template([ChatMessage(m.role, m.text()) for m in body.messages],
                                               body.add_generation_prompt)
    else:
        assert body.prompt is not None
        bos = tokenizer.bos_token_id if body.add_special_tokens and tokenizer.add_bos else None
        tokens = ([bos] if bos is not None else []) + tokenizer.encode(body.prompt)
    strs = [tokenizer.id_to_token(t) for t in tokens] if body.return_token_strs else None
    return {"count": len(tokens), "max_model_len": engine.max_model_len, "tokens": tokens, "token_strs": strs}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, state: AppState = Depends(get_state),
                     _: Principal = Depends(current_principal)) -> dict:
    tokenizer = engine_of(state).tokenizer
    bad = next((t for t in body.tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise ApiError(400, "invalid_request",
                       f"token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1})")
    return {"prompt": tokenizer.decode(body.tokens, skip_special_tokens=False)}
