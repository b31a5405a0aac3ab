"""The text a local model reads for a request.

A generate request goes through the tokenizer's chat template: ``systemInstruction``
as the system message, ``user``/``model`` turns as user/assistant, and the generation
prompt after them. A base model without a template reads the turns joined plainly. An
embed request is its text, with its ``title`` put first. The transformers and vLLM
backends share this, so the same request gives the same prompt tokens on both.

Declared functions, earlier calls and function responses are rendered by
``backends.tools.chat_messages``: in the template's own tool format where it has one,
else in a documented plain-text form (docs/function-calling.md).
"""

from __future__ import annotations

from typing import Any

from overnight.backends.tools import chat_messages, native_tools
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.errors import RequestRejected


def chat_prompt(tokenizer: Any, request: GenerateRequest) -> str:
    """The prompt text: systemInstruction and the turns through the tokenizer's chat
    template (``model`` turns as assistant), or joined plainly for a base model.

    Raises RequestRejected when the template refuses the turns (role order, …).
    """
    messages, tools = chat_messages(request, native=native_tools(tokenizer))
    if not getattr(tokenizer, "chat_template", None):  # a base model: plain text
        return "\n\n".join(m["content"] for m in messages)
    try:
        text: str = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # the template's own checks (role order, …)
        raise RequestRejected(f"contents: the model's chat template refused them: {exc}") from None
    return text


def embed_text(request: EmbedRequest) -> str:
    """The text of an embedding request; a ``title`` goes first: ``TITLE\\n\\nTEXT``."""
    text = request.content.text
    return f"{request.title}\n\n{text}" if request.title else text
