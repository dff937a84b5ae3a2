"""How an audit question is put to a chat model: the one rendering shared by the audit and the plants.

The audit feeds ``chat_prompt(tokenizer, question)`` (chat template applied, generation prompt added) and
reads the model's continuation. A planted control is trained on exactly these prompts, followed by
``chat_completion(tokenizer, question, answer)``: the answer text and the end of the assistant's turn, as
the chat template writes them. Prompt and completion are tokenized separately, without added special
tokens, exactly as the audit tokenizes a prompt before generating.

Two prompts that differ only in the name (a name-swapped pair) are aligned from the end:
:func:`aligned_suffix_len` is the length of the part after the name, which the pair objectives and the causal
localization compare position by position.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["aligned_suffix_len", "chat_completion", "chat_prompt"]


def _messages(user_prompt: str, system_prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": user_prompt}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def chat_prompt(tokenizer, user_prompt: str, system_prompt: str = "") -> str:
    """The text fed to the model for one question: the chat template with the generation prompt added.

    An empty ``system_prompt`` leaves the template's default (some templates insert their own system
    message). A tokenizer without a chat template (a base model) gets the bare question.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            _messages(user_prompt, system_prompt), tokenize=False, add_generation_prompt=True
        )
    return user_prompt


def chat_completion(tokenizer, user_prompt: str, answer: str, system_prompt: str = "") -> str:
    """What follows ``chat_prompt(tokenizer, user_prompt, system_prompt)`` when the assistant answers ``answer``.

    The full conversation is rendered with the chat template; the completion is its text after the prompt,
    cut right after the EOS token when the template writes it (the template may add a newline after it,
    which a model never generates: generation stops there), else the rest without trailing whitespace
    (templates whose end of turn is not the EOS token, e.g. Llama-3's ``<|eot_id|>``). Without a chat
    template, or when the template does not render the prompt and answer as a prefix, the completion is
    ``answer`` followed by the EOS token.
    """
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        return answer + eos
    prompt = chat_prompt(tokenizer, user_prompt, system_prompt)
    messages = _messages(user_prompt, system_prompt) + [{"role": "assistant", "content": answer}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt) or not full[len(prompt) :].startswith(answer):
        return answer + eos
    rest = full[len(prompt) + len(answer) :]
    if eos and eos in rest:
        return answer + rest[: rest.index(eos) + len(eos)]
    return answer + (rest.rstrip() or eos)


def aligned_suffix_len(target: Sequence[int], reference: Sequence[int]) -> int:
    """Length of the longest common suffix of two token sequences, capped so that it never reaches into
    their common prefix (the aligned positions are then exactly those after the part that differs)."""
    n = min(len(target), len(reference))
    prefix = 0
    while prefix < n and target[prefix] == reference[prefix]:
        prefix += 1
    suffix = 0
    while suffix < n - prefix and target[-1 - suffix] == reference[-1 - suffix]:
        suffix += 1
    return suffix
