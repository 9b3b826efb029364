"""Chat / completion dataset loading: every format's ids, stop handling, and bad-record reports.

Tokenizers are built in place (word-level vocabularies), so expected ids come from tokenizing
strings written out by hand here.
"""

import json
import sys

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from gkd_jax.data.chat import load_examples
from gkd_jax.data.records import read_records

WORDS = [f"w{i}" for i in range(20)]

# The bench template (shared/bench/make_tiny_hf_models.py): "<|role|> content <|end|> ".
TINY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Like DeepSeek-R1's: the generation prompt opens a <think> block, but rendered assistant turns
# drop their reasoning, so the prompt is not a prefix of the full conversation.
THINK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'].split('</think>')[-1] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> <think> {% endif %}"
)
NO_END_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def word_tokenizer(template=TINY_TEMPLATE, post=None):
    specials = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["<think>", "</think>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if post is not None:
        tok.post_processor = post
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<|end|>"
    )
    fast.chat_template = template
    return fast


def chatml_tokenizer():
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + ["user", "assistant", "system"])}
    vocab.update({"\n": len(vocab), " ": len(vocab) + 1})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[ \n]"), behavior="isolated")
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


# add_special_tokens=True: Llama-style prepends <bos>; T5-style appends the end-of-sequence token.
BOS_POST = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
T5_POST = processors.TemplateProcessing(single="$A <|end|>", special_tokens=[("<|end|>", 6)])


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def load(path, tok, strict=True, log=None, **kw):
    kw = {"max_prompt_len": 64, "max_completion_len": 64, **kw}
    stop = kw.pop("stop_ids", [tok.eos_token_id])
    return load_examples(path, tok, stop_ids=stop, strict=strict, log=log or (lambda s: None), **kw)


def test_helpers_tokenize_as_written():
    tok = word_tokenizer()
    assert (
        tok.convert_ids_to_tokens(enc(tok, "<|user|> w1 <|end|>")) == "<|user|> w1 <|end|>".split()
    )
    assert word_tokenizer(post=BOS_POST)("w1")["input_ids"] == [1, 8]
    ct = chatml_tokenizer()
    assert ct.convert_ids_to_tokens(enc(ct, "<|im_start|>user\nw1 w2")) == [
        "<|im_start|>", "user", "\n", "w1", " ", "w2",
    ]  # fmt: skip


def test_conversational_single_turn(tmp_path):
    tok = word_tokenizer()
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"messages": msgs(("user", "w1 w2"), ("assistant", "w3 w4"))}]
    )
    logs = []
    (ex,), report = load(path, tok, log=logs.append)
    assert ex.prompt_ids == enc(tok, "<|user|> w1 w2 <|end|> <|assistant|>")
    assert ex.completion_ids == enc(tok, "w3 w4 <|end|>")
    assert (ex.source, ex.reference) == (f"{path}:1", "w3 w4")
    assert (report.read, report.kept, report.truncated_completions) == (1, 1, 0)
    assert report.problems == {}
    assert logs == [
        f"data: {path}: kept 1 of 1 records"
        " (0 bad, 0 completions truncated to max_completion_len=64)"
    ]


def test_multi_turn_puts_earlier_assistant_turns_in_prompt(tmp_path):
    tok = word_tokenizer()
    conv = msgs(
        ("system", "w0"),
        ("user", "w1"),
        ("assistant", "w2"),
        ("user", "w3"),
        ("assistant", "w4 w5"),
    )
    (ex,), _ = load(write_jsonl(tmp_path / "d.jsonl", [{"messages": conv}]), tok)
    assert ex.prompt_ids == enc(
        tok,
        "<|system|> w0 <|end|> <|user|> w1 <|end|> <|assistant|> w2 <|end|> "
        "<|user|> w3 <|end|> <|assistant|>",
    )
    assert ex.completion_ids == enc(tok, "w4 w5 <|end|>")
    assert ex.reference == "w4 w5"


def test_chatml_cuts_trailing_newline_after_stop(tmp_path):
    tok = chatml_tokenizer()
    conv = msgs(("system", "w0"), ("user", "w1 w2"), ("assistant", "w3 w4"))
    (ex,), _ = load(write_jsonl(tmp_path / "d.jsonl", [{"messages": conv}]), tok)
    assert ex.prompt_ids == enc(
        tok,
        "<|im_start|>system\nw0<|im_end|>\n"
        "<|im_start|>user\nw1 w2<|im_end|>\n<|im_start|>assistant\n",
    )
    assert ex.completion_ids == enc(tok, "w3 w4<|im_end|>")  # the template's "\n" is dropped


def test_conversational_prompt_completion_matches_messages(tmp_path):
    tok = chatml_tokenizer()
    p, c = msgs(("user", "w1")), msgs(("assistant", "w2"))
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "completion": c}, {"messages": p + c}])
    (a, b), _ = load(path, tok)
    assert (a.prompt_ids, a.completion_ids) == (b.prompt_ids, b.completion_ids)
    assert a.completion_ids == enc(tok, "w2<|im_end|>")


def test_standard_prompt_completion_uses_default_special_tokens(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "w1 w2", "completion": "w3"}])
    tok = word_tokenizer(post=BOS_POST)
    (ex,), _ = load(path, tok)
    assert ex.prompt_ids == [tok.bos_token_id, *enc(tok, "w1 w2")]
    assert ex.completion_ids == enc(tok, "w3 <|end|>")  # no BOS, EOS appended
    assert ex.reference == "w3"
    (ex,), _ = load(path, word_tokenizer(post=T5_POST))
    assert ex.prompt_ids == enc(tok, "w1 w2 <|end|>")  # T5's encoder input ends with </s>


def test_template_bos_is_not_doubled(tmp_path):
    tok = word_tokenizer(template="{{ bos_token }}" + TINY_TEMPLATE, post=BOS_POST)
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"messages": msgs(("user", "w1"), ("assistant", "w2"))}]
    )
    (ex,), _ = load(path, tok)
    assert ex.prompt_ids == enc(tok, "<bos> <|user|> w1 <|end|> <|assistant|>")


def test_eos_appended_when_completion_has_no_stop(tmp_path):
    tok = word_tokenizer(template=NO_END_TEMPLATE)
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"messages": msgs(("user", "w1"), ("assistant", "w2 w3"))}]
    )
    (ex,), _ = load(path, tok)
    assert ex.completion_ids == [*enc(tok, "w2 w3"), tok.eos_token_id]
    # A stop id inside the completion: cut right after it, no EOS appended.
    (ex,), _ = load(path, tok, stop_ids=enc(tok, "w2"))
    assert ex.completion_ids == enc(tok, "w2")


def test_completion_ends_at_its_first_stop_id(tmp_path):
    """The sampler stops at the first stop id it emits: a stop token in the middle of a
    completion ends it there, in every format."""
    tok = word_tokenizer()
    recs = [
        {"prompt": "w1", "completion": "w2 <|end|> w3 <|end|> w4"},
        {"messages": msgs(("user", "w1"), ("assistant", "w3 <|end|> w4"))},
        {"prompt": "w1", "completion": "<|end|> w5"},
    ]
    plain, chat, first = load(write_jsonl(tmp_path / "d.jsonl", recs), tok)[0]
    assert plain.completion_ids == enc(tok, "w2 <|end|>")
    assert chat.completion_ids == enc(tok, "w3 <|end|>")  # rendered "w3 <|end|> w4 <|end|> "
    assert first.completion_ids == [tok.eos_token_id]
    # Any of several stop ids: the first one present.
    (ex,), _ = load(write_jsonl(tmp_path / "e.jsonl", recs[:1]), tok, stop_ids=enc(tok, "w3 w4"))
    assert ex.completion_ids == enc(tok, "w2 <|end|> w3")


def test_long_completion_truncated_and_counted(tmp_path):
    tok = word_tokenizer()
    recs = [{"prompt": "w1", "completion": "w2 w3 w4 w5"}, {"prompt": "w1", "completion": "w2"}]
    logs = []
    (a, b), report = load(
        write_jsonl(tmp_path / "d.jsonl", recs), tok, max_completion_len=3, log=logs.append
    )
    assert a.completion_ids == enc(tok, "w2 w3 w4")
    assert b.completion_ids == enc(tok, "w2 <|end|>")
    assert report.truncated_completions == 1
    assert "1 completions truncated to max_completion_len=3" in logs[0]


def bad_file(tmp_path):
    good = {"messages": msgs(("user", "w1"), ("assistant", "w2"))}
    lines = [
        good,  # 1
        '{"messages": [',  # 2
        [1, 2],  # 3
        "",  # 4: blank lines are skipped, but still counted for line numbers
        {"prompt": "w1"},  # 5
        {"text": "w1"},  # 6
        {"messages": [{"content": "w1"}, {"role": "assistant", "content": "w2"}]},  # 7
        {"messages": msgs(("user", "w1")) + [{"role": "assistant", "content": ["w2"]}]},  # 8
        {"messages": msgs(("user", "w1"), ("user", "w2"))},  # 9
        {"messages": msgs(("user", "w1"), ("assistant", "w2"), ("user", "w3"))},  # 10
        {"messages": msgs(("user", "w1"), ("assistant", " "))},  # 11
        {"prompt": "", "completion": "w1"},  # 12
        {"prompt": " ".join(WORDS[:10]), "completion": "w1"},  # 13: 11 tokens with <bos>
        {"prompt": "w1", "completion": "w2"},  # 14
        '{"prompt": "w1" "completion": "w2"}',  # 15
        {"prompt": " ".join(WORDS[:12]), "completion": "w1"},  # 16: 13 tokens
        {"completion": "w1"},  # 17
        {"messages": []},  # 18
        {"messages": msgs(("user", "w1"), ("assistant", "w2")), "prompt": "w1"},  # 19
        {"prompt": "w1", "completion": msgs(("assistant", "w2"))},  # 20
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    expected = {
        "malformed JSON": [
            f"{path}:2 (Expecting value at column 15)",
            f"{path}:15 (Expecting ',' delimiter at column 17)",
        ],
        "record is not a JSON object": [f"{path}:3 (list)"],
        "missing field 'completion'": [f"{path}:5"],
        "unknown fields (need 'messages' or 'prompt'+'completion'; got 'text')": [f"{path}:6"],
        "message without role/content": [f"{path}:7 (messages[0])"],
        "message content is not a string": [f"{path}:8 (messages[1])"],
        "no assistant turn": [f"{path}:9"],
        "turns after the last assistant message": [f"{path}:10"],
        "empty completion": [f"{path}:11"],
        "empty prompt": [f"{path}:12"],
        "prompt longer than max_prompt_len=10 tokens": [
            f"{path}:13 (got 11)",
            f"{path}:16 (got 13)",
        ],
        "missing field 'prompt'": [f"{path}:17"],
        "'messages' is not a non-empty list of messages": [f"{path}:18"],
        "both 'messages' and 'prompt'/'completion' fields": [f"{path}:19"],
        "'prompt' and 'completion' must both be strings or both message lists": [f"{path}:20"],
    }
    return path, expected


def test_bad_records_strict_raises_with_all_reasons_and_lines(tmp_path):
    path, expected = bad_file(tmp_path)
    logs = []
    with pytest.raises(ValueError) as err:
        load(path, word_tokenizer(post=BOS_POST), max_prompt_len=10, log=logs.append)
    msg = str(err.value)
    assert msg.startswith(f"17 of 19 records in {path} are bad")
    for reason, locs in expected.items():
        assert f"  {reason}: {len(locs)} at {'; '.join(locs)}" in msg.splitlines()
    assert logs == [
        f"data: {path}: kept 2 of 19 records"
        " (17 bad, 0 completions truncated to max_completion_len=64)"
    ]


def test_bad_records_non_strict_skips_and_reports(tmp_path):
    path, expected = bad_file(tmp_path)
    logs = []
    examples, report = load(
        path, word_tokenizer(post=BOS_POST), strict=False, max_prompt_len=10, log=logs.append
    )
    assert [ex.source for ex in examples] == [f"{path}:1", f"{path}:14"]
    assert report.problems == expected
    assert (report.read, report.kept) == (19, 2)
    assert len(logs) == 1 and logs[0] == str(report)
    assert logs[0].splitlines()[1:] == [
        f"  {r}: {len(locs)} at {'; '.join(locs)}" for r, locs in expected.items()
    ]


def test_summary_shows_first_few_locations(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "w1", "completion": "w2"}] + ["[1"] * 5)
    _, report = load(path, word_tokenizer(), strict=False)
    err = "(Expecting ',' delimiter at column 3)"
    assert report.summary().splitlines()[1] == (
        f"  malformed JSON: 5 at {path}:2 {err}; {path}:3 {err}; {path}:4 {err}; ... and 2 more"
    )


def test_template_that_is_not_prefix_consistent_is_reported(tmp_path):
    tok = word_tokenizer(template=THINK_TEMPLATE)
    conv = msgs(("user", "w1"), ("assistant", "<think> w2 </think> w3"))
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "w1", "completion": "w2"}, {"messages": conv}]
    )
    with pytest.raises(ValueError, match=rf"(?s)prompt is not a prefix.*: 1 at {path}:2"):
        load(path, tok)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match="no records in"):
        load(str(path), word_tokenizer(), strict=False)


def test_all_bad_is_an_error_even_non_strict(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "w1"}, "nope"])
    with pytest.raises(
        ValueError, match=rf"(?s)no usable examples in {path}.*malformed JSON: 1 at {path}:2"
    ):
        load(path, word_tokenizer(), strict=False)


def test_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps([{"prompt": "w1", "completion": "w2"}, {"prompt": "w3", "completion": "w4"}])
    )
    examples, _ = load(str(path), word_tokenizer())
    assert [ex.source for ex in examples] == [f"{path}#0", f"{path}#1"]


def test_unsupported_and_missing_sources(tmp_path):
    with pytest.raises(ValueError, match="unsupported data source"):
        list(read_records(str(tmp_path / "d.csv")))
    with pytest.raises(FileNotFoundError, match="data file not found"):
        list(read_records(str(tmp_path / "missing.jsonl")))


def test_missing_datasets_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        list(read_records(str(tmp_path)))
    with pytest.raises(ImportError, match="pip install datasets"):
        list(read_records("hf:some/dataset:main"))


def test_save_to_disk_directories(tmp_path):
    datasets = pytest.importorskip("datasets")
    tok = chatml_tokenizer()
    train = [
        {"messages": msgs(("user", "w1"), ("assistant", "w2"))},
        {"messages": msgs(("user", "w3"))},
    ]
    test = [{"messages": msgs(("user", "w4"), ("assistant", "w5"))}]
    ds_dir = str(tmp_path / "single")
    datasets.Dataset.from_list(train).save_to_disk(ds_dir)
    examples, report = load(ds_dir, tok, strict=False)
    assert [ex.source for ex in examples] == [f"{ds_dir}#0"]
    assert examples[0].completion_ids == enc(tok, "w2<|im_end|>")
    assert report.problems == {"no assistant turn": [f"{ds_dir}#1"]}

    dd_dir = str(tmp_path / "dict")
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(train), test=datasets.Dataset.from_list(test)
    ).save_to_disk(dd_dir)
    (ex,), _ = load(dd_dir, tok, split="test")
    assert ex.source == f"{dd_dir}[test]#0"
    assert ex.prompt_ids == enc(tok, "<|im_start|>user\nw4<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match=r"no split 'validation' \(has: train, test\)"):
        load(dd_dir, tok, split="validation")


def test_save_to_disk_mixed_formats_use_present_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    # One table: each row has every column, None where its format does not use it.
    rows = [
        {"prompt": "w1", "completion": "w2", "id": 0},
        {"prompt": "w3", "completion": None, "id": 1},
    ]
    path = str(tmp_path / "ds")
    datasets.Dataset.from_list(rows).save_to_disk(path)
    (ex,), report = load(path, word_tokenizer(post=BOS_POST), strict=False)
    assert ex.prompt_ids == enc(word_tokenizer(), "<bos> w1")
    assert report.problems == {"missing field 'completion'": [f"{path}#1"]}


def test_template_exception_is_a_bad_record(tmp_path):
    tok = word_tokenizer(template="{{ raise_exception('roles must alternate') }}")
    conv = msgs(("user", "w1"), ("assistant", "w2"))
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "w1", "completion": "w2"}, {"messages": conv}]
    )
    (ex,), report = load(path, tok, strict=False)
    assert ex.source == f"{path}:1"
    [(reason, [loc])] = report.problems.items()
    assert reason == "chat template error"
    assert loc.startswith(f"{path}:2 (") and "roles must alternate" in loc


def test_prompt_overflow_truncate_left_keeps_the_end_and_counts(tmp_path):
    tok = word_tokenizer()
    recs = [{"prompt": "w1 w2 w3 w4 w5", "completion": "w6"}, {"prompt": "w1", "completion": "w2"}]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    with pytest.raises(ValueError, match="prompt longer than max_prompt_len=3"):
        load(path, tok, max_prompt_len=3)  # the default policy: an error
    logs = []
    (a, b), report = load(
        path, tok, max_prompt_len=3, prompt_overflow="truncate_left", log=logs.append
    )
    assert a.prompt_ids == enc(tok, "w3 w4 w5") and b.prompt_ids == enc(tok, "w1")
    assert report.truncated_prompts == 1 and report.problems == {}
    assert "1 prompts cut to their last max_prompt_len tokens" in logs[0]
    with pytest.raises(ValueError, match="prompt_overflow='middle'"):
        load(path, tok, prompt_overflow="middle")
