"""How a model reads a prompt: raw text for a model without a chat template, the tokenizer's
chat template for an instruction-tuned one. Every place that turns a prompt into tokens for
generation, option scoring or SFT goes through these functions.

The prompts themselves (``culture_rl.data.prompts``) are plain text, written for a base model
("... Answer:"). With a chat template the prompt becomes the user's turn, its culture preamble
("You are a person from X.") the system message, and the answer the assistant's turn that the
template's generation prompt opens. A tokenizer without a template (the tiny model, base
models) gets the prompt unchanged, byte for byte. ALIGN's authors prompt their chat models the
same way (``tokenizer.apply_chat_template``; OpenRLHF's ``--apply_chat_template`` in PPO).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Union

from culture_rl.data.prompts import split_preamble


class AnswerBegun(NamedTuple):
    """A prompt whose answer the model has already begun: ``written`` (CCoT's thoughts and
    "Answer:") continues the assistant's turn, so a chat model reads its own thoughts as its
    own words, not as the user's. A base model reads ``prompt + written``, the raw text it
    always read. CultureSPA's authors prompt CCoT this way: the system and the question are the
    template's turns, and the model thinks and answers in one assistant turn."""

    prompt: str
    written: str


Prompt = Union[str, AnswerBegun]


def apply_choice(tokenizer, chat_template: str = "auto"):
    """``model.chat_template`` on a loaded tokenizer: 'none' drops its template, so the model
    reads raw text everywhere and an export saves the tokenizer without it; 'auto' keeps it."""
    if chat_template not in ("auto", "none"):
        raise ValueError(f"chat_template must be 'auto' or 'none', not {chat_template!r}")
    if chat_template == "none":
        tokenizer.chat_template = None
    return tokenizer


def uses_chat(tokenizer) -> bool:
    """True when the tokenizer has a chat template (an instruction-tuned model)."""
    return bool(getattr(tokenizer, "chat_template", None))


def messages(text: str) -> list[dict]:
    """A prompt as chat messages: the culture preamble as the system message, the rest as the
    user's turn."""
    system, user = split_preamble(text)
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": user.strip()}]


def _preamble_in_user_turn(turns: list[dict]) -> list[dict]:
    return [{"role": "user", "content": f"{turns[0]['content']}\n{turns[1]['content']}"}]


def _render(tokenizer, turns: list[dict]) -> str:
    """The template's rendering with the assistant's turn opened; a template that refuses a
    system message (Gemma's raises "System role not supported") gets the preamble at the start
    of the user's turn instead."""
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja2's TemplateError, raised by the template's own raise_exception
        if turns[0]["role"] != "system":
            raise
        return tokenizer.apply_chat_template(_preamble_in_user_turn(turns), tokenize=False,
                                             add_generation_prompt=True)


def template_messages(tokenizer, text: str) -> list[dict]:
    """:func:`messages` as this tokenizer's template takes them (see :func:`_render`), for TRL,
    which applies the template itself."""
    turns = messages(text)
    if turns[0]["role"] != "system":
        return turns
    try:
        tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception:  # as in _render
        return _preamble_in_user_turn(turns)
    return turns


def chat_prompt(tokenizer, prompt: Prompt) -> str:
    """``prompt`` as the model reads it before its answer: unchanged without a chat template;
    else the template's rendering of :func:`messages` (one rendering per prompt: this runs
    for every prompt of every rollout and evaluation), followed by what an
    :class:`AnswerBegun` has already written of the answer."""
    text, written = (prompt, "") if isinstance(prompt, str) else prompt
    if not uses_chat(tokenizer):
        return text + written
    return _render(tokenizer, messages(text)) + written


def chat_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[str]:
    return [chat_prompt(tokenizer, prompt) for prompt in prompts]


def answer_text(tokenizer, completion: str, begun: bool = False) -> str:
    """An answer as the model writes it after the prompt: the raw completion (with its leading
    space) for a base model, or after an answer already ``begun`` (" 1" after "Answer:");
    stripped at the start of the assistant's turn for a chat model (an option label " 1" is
    "1" there)."""
    return completion.lstrip() if uses_chat(tokenizer) and not begun else completion


def statement_ids(tokenizer, text: str) -> tuple[list[int], list[bool]]:
    """A text the model reads without answering it (a CALM value statement) as token ids, and
    which of them are the text's own. Without a chat template: the text's ids, all its own.
    With one: the text as the user's turn with the assistant's turn opened (as every prompt
    is), its own tokens the ones inside the user's content, so that the identity state is read
    from the statement rather than the template's fixed tokens and the LM loss covers only the
    statement."""
    if not uses_chat(tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, [True] * len(ids)
    rendered = chat_prompt(tokenizer, text)
    content = messages(text)[-1]["content"]
    start = rendered.rfind(content)
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    if start < 0:  # a template that rewrites the content: read every token, as without one
        return encoded["input_ids"], [True] * len(encoded["input_ids"])
    end = start + len(content)
    own = [begin < end and stop > start for begin, stop in encoded["offset_mapping"]]
    return encoded["input_ids"], own


def sft_example(tokenizer, prompt: str, completion: str) -> dict:
    """One prompt/completion row for TRL's SFTTrainer: strings for a base model, or
    conversational messages (TRL applies the template and masks the loss to the assistant's
    tokens, end-of-turn included) for a chat model."""
    if not uses_chat(tokenizer):
        return {"prompt": prompt, "completion": completion}
    return {"prompt": template_messages(tokenizer, prompt),
            "completion": [{"role": "assistant", "content": completion.strip()}]}


def preference_example(tokenizer, prompt: str, chosen: str, rejected: str) -> dict:
    """One pair for TRL's DPOTrainer, as :func:`sft_example` makes an SFT row: strings for a
    base model (each answer after the prompt as the model writes it, its leading space kept),
    conversational messages for a chat model (TRL applies the template to both answers)."""
    if not uses_chat(tokenizer):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {"prompt": template_messages(tokenizer, prompt),
            "chosen": [{"role": "assistant", "content": chosen.strip()}],
            "rejected": [{"role": "assistant", "content": rejected.strip()}]}


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the model's generation config
    EOS ids (instruct models list their end-of-turn there, e.g. Llama 3's <|eot_id|>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    for token in ([extra] if isinstance(extra, int) else list(extra or [])):
        if token not in ids:
            ids.append(int(token))
    return ids
