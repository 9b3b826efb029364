"""Chat / completion datasets (TRL's formats) -> tokenized prompt/completion pairs.

Accepted records:

* conversational: ``{"messages": [{"role": ..., "content": ...}, ...]}``; the prompt is every
  turn before the last assistant turn, rendered by the chat template with a generation prompt,
  and the completion is the rest of the full rendering;
* conversational prompt-completion: ``{"prompt": [messages], "completion": [messages]}``;
* standard prompt-completion: ``{"prompt": "text", "completion": "text"}`` (no template).

Any of them may carry ``"answer"`` (a checkable answer, a string or an integer, scored by
evaluation's answer_accuracy: metrics.answer_correct) and ``"family"`` (a string naming the
record's kind of task, for per-family accuracy); other extra fields are ignored.

Bad records are never dropped silently: every one is reported with its location, and by
default (``strict=True``) any bad record fails the load after the whole source was read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence

from gkd_jax.data.records import PROMPT_OVERFLOW, BadRecord, DataReport, read_records


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    prompt_ids: list[int]
    completion_ids: list[int]  # ends with a stop token unless truncated
    source: str  # "file.jsonl:LINE" (1-based) or "dataset[split]#INDEX"
    reference: str  # the completion's text, for evaluation
    answer: str | None = None  # the record's checkable answer ("answer"), if any
    family: str | None = None  # the record's task family ("family"), if any


def _check_messages(messages: object, field: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRecord(f"'{field}' is not a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise BadRecord("message without role/content", f"{field}[{i}]")
        if not isinstance(m["content"], str):
            raise BadRecord("message content is not a string", f"{field}[{i}]")
    return messages


def _end_at_stop(ids: list[int], stops: set[int], eos: int) -> list[int]:
    r"""The completion up to and including its first stop id (EOS appended if it has none): the
    sampler halts at the first stop id it emits, so anything after one (ChatML's "\n" after
    <|im_end|>, or text after a stop token inside the completion) is a target it never produces."""
    first = next((i for i, t in enumerate(ids) if t in stops), None)
    return ids[: first + 1] if first is not None else [*ids, eos]


def _render_chat(tokenizer, messages: list[dict], stops: set[int]) -> tuple[list, list, str]:
    """(prompt ids, completion ids, reference) of a conversation."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise BadRecord("no assistant turn")
    if last != len(messages) - 1:
        raise BadRecord("turns after the last assistant message")
    if last == 0:
        raise BadRecord("empty prompt", "no turns before the assistant turn")
    reference = messages[last]["content"]
    if not reference.strip():
        raise BadRecord("empty completion")
    try:
        prompt = tokenizer.apply_chat_template(
            messages[:last], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # a template's raise_exception() or a Jinja error: this record only
        raise BadRecord("chat template error", f"{type(e).__name__}: {e}") from e
    if not full.startswith(prompt):
        raise BadRecord(
            "chat template: the rendered prompt is not a prefix of the rendered conversation (the "
            "template renders the same turns differently, e.g. adds or strips reasoning)"
        )
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if f_ids[: len(p_ids)] == p_ids:
        c_ids = f_ids[len(p_ids) :]
    else:  # a token merged across the boundary: tokenize the completion text on its own
        c_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return p_ids, _end_at_stop(c_ids, stops, tokenizer.eos_token_id), reference


def _tokenize(tokenizer, rec: object, stops: set[int]) -> tuple[list[int], list[int], str]:
    if isinstance(rec, json.JSONDecodeError):
        raise BadRecord("malformed JSON", f"{rec.msg} at column {rec.colno}")
    if not isinstance(rec, dict):
        raise BadRecord("record is not a JSON object", type(rec).__name__)
    # Rows of a HF dataset carry every column; a field another format uses is None there.
    has_msgs, has_p, has_c = (rec.get(k) is not None for k in ("messages", "prompt", "completion"))
    if has_msgs and (has_p or has_c):
        raise BadRecord("both 'messages' and 'prompt'/'completion' fields")
    if not (has_msgs or has_p or has_c):
        fields = ", ".join(map(repr, rec)) or "none"
        raise BadRecord(f"unknown fields (need 'messages' or 'prompt'+'completion'; got {fields})")
    if has_p != has_c:
        raise BadRecord(f"missing field {'completion' if has_p else 'prompt'!r}")
    if has_msgs:
        return _render_chat(tokenizer, _check_messages(rec["messages"], "messages"), stops)
    prompt, completion = rec["prompt"], rec["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        messages = _check_messages(prompt, "prompt") + _check_messages(completion, "completion")
        return _render_chat(tokenizer, messages, stops)
    if not (isinstance(prompt, str) and isinstance(completion, str)):
        raise BadRecord("'prompt' and 'completion' must both be strings or both message lists")
    if not prompt.strip():
        raise BadRecord("empty prompt")
    if not completion.strip():
        raise BadRecord("empty completion")
    # Plain text: the tokenizer's own special tokens (BOS, or T5's </s>) frame the prompt.
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return p_ids, _end_at_stop(c_ids, stops, tokenizer.eos_token_id), completion


def _extras(rec: object) -> tuple[str | None, str | None]:
    """(answer, family) of a record: optional; an integer answer is kept as its text."""
    if not isinstance(rec, dict):
        return None, None
    answer, family = rec.get("answer"), rec.get("family")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int))):
        raise BadRecord("'answer' is not a string or an integer", type(answer).__name__)
    if family is not None and not isinstance(family, str):
        raise BadRecord("'family' is not a string", type(family).__name__)
    return (None if answer is None else str(answer)), family


def load_examples(
    spec: str,
    tokenizer,
    *,
    split: str = "train",
    max_prompt_len: int,
    max_completion_len: int,
    stop_ids: Sequence[int],
    strict: bool = True,
    prompt_overflow: str = "error",
    log: Callable[[str], None] = print,
) -> tuple[list[TokenizedExample], DataReport]:
    """Tokenize every record of `spec` (see `records.read_records`); report and handle bad records.

    A prompt over `max_prompt_len` is a bad record with `prompt_overflow="error"`; with
    "truncate_left" it keeps its last `max_prompt_len` tokens (the turns nearest the reply),
    counted in the report."""
    if prompt_overflow not in PROMPT_OVERFLOW:
        raise ValueError(f"prompt_overflow={prompt_overflow!r}: choose one of {PROMPT_OVERFLOW}")
    if max_prompt_len < 1 or max_completion_len < 1:
        raise ValueError(
            f"max_prompt_len={max_prompt_len} and max_completion_len="
            f"{max_completion_len} must be >= 1"
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token_id")
    stops = set(stop_ids)
    report = DataReport(source=spec, max_completion_len=max_completion_len)
    examples = []
    for loc, rec in read_records(spec, split=split):
        report.read += 1
        try:
            p_ids, c_ids, reference = _tokenize(tokenizer, rec, stops)
            answer, family = _extras(rec)
            if not p_ids:
                raise BadRecord("empty prompt", "no tokens")
            if len(p_ids) > max_prompt_len and prompt_overflow == "truncate_left":
                p_ids = p_ids[-max_prompt_len:]
                report.truncated_prompts += 1
            if len(p_ids) > max_prompt_len:
                raise BadRecord(
                    f"prompt longer than max_prompt_len={max_prompt_len} tokens",
                    f"got {len(p_ids)}",
                )
        except BadRecord as e:
            report.add_problem(loc, e.reason, e.detail)
            continue
        if len(c_ids) > max_completion_len:
            c_ids = c_ids[:max_completion_len]
            report.truncated_completions += 1
        examples.append(TokenizedExample(p_ids, c_ids, loc, reference, answer, family))
    report.kept = len(examples)
    if report.read == 0:
        raise ValueError(f"no records in {spec} (empty file or dataset)")
    # In strict mode the error below carries the per-reason lines; do not print them twice.
    log(report.headline() if strict else report.summary())
    if report.problems and strict:
        head = f"{report.bad} of {report.read} records in {spec} are bad"
        head += " (fix them, or pass strict=False to skip them):"
        raise ValueError("\n".join([head, *report.problem_lines()]))
    if not examples:
        raise ValueError("\n".join([f"no usable examples in {spec}:", *report.problem_lines()]))
    return examples, report
