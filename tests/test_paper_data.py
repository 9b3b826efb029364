"""The paper's tasks (xsum, wmt_en_de, gsm8k): formatting, sources, bad records, metrics."""

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from gkd_jax.config.checks import validate_config
from gkd_jax.config.defaults import base_config
from gkd_jax.data import gsm8k, gsm8k_prompt, paper_tasks, sources, xsum
from gkd_jax.data.tasks import get_task

XSUM = [
    {"document": "The cat sat on the mat all day.", "summary": "A cat sat."},
    {"document": "Rain fell over Leeds on Monday.", "summary": "Rain in Leeds."},
    {"document": "Prices rose by 3% in May.", "summary": "Prices rose."},
]
WMT = [
    {"en": "The house is small.", "de": "Das Haus ist klein."},
    {"en": "I like tea.", "de": "Ich mag Tee."},
    {"en": "Good morning!", "de": "Guten Morgen!"},
]
GSM8K = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
        "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {"question": "What is 2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
    {"question": "Tom has 1,200 cents. How many?", "answer": "He has 1,200.\n#### 1,200"},
]
RECORDS = {"xsum": XSUM, "wmt_en_de": WMT, "gsm8k": GSM8K}


def byte_tokenizer(closing_eos: bool = True):
    """A byte-level tokenizer (every string round-trips); `closing_eos`: it appends </s> to
    what it encodes with special tokens, like T5's."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(alphabet)}}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    if closing_eos:
        t.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 1)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="</s>")


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def jsonl_config(task, tmp_path, train, evals=None, **data):
    c = base_config()
    c.task, c.max_new_tokens = task, 256
    c.data.source, c.data.max_prompt_len = "jsonl", 2048
    c.data.train_file = write_jsonl(tmp_path / "train.jsonl", train)
    c.data.eval_file = write_jsonl(tmp_path / "eval.jsonl", train if evals is None else evals)
    for k, v in data.items():
        c.data[k] = v
    return c


def load(config, tok, log=lambda _: None):
    return get_task(config.task).load(config, tok, [tok.eos_token_id], log=log)


# ------------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    "task, prompt, target",
    [
        ("xsum", "summarize: The cat sat on the mat all day.", "A cat sat."),
        ("wmt_en_de", "translate English to German: The house is small.", "Das Haus ist klein."),
    ],
)
def test_prompt_and_target_token_ids(tok, tmp_path, task, prompt, target):
    train, evals = load(jsonl_config(task, tmp_path, RECORDS[task]), tok)
    eos = tok.eos_token_id
    assert train.prompts[0] == prompt
    assert list(train.prompt_ids[0]) == [*ids(tok, prompt), eos]  # T5: the prompt ends with </s>
    assert list(train.completion_ids[0]) == [*ids(tok, target), eos]
    assert train.references[0] == target
    assert len(train.prompt_ids) == len(evals.prompt_ids) == 3


def test_gsm8k_prompt_is_the_four_exemplars_then_the_question():
    prompt = gsm8k_prompt.few_shot_prompt("How many legs do 2 cats have?")
    starts = [
        "Q: There are 15 trees in the grove.",
        "Q: If there are 3 cars in the parking lot",
        "Q: Leah had 32 chocolates",
        "Q: Jason had 20 lollipops.",
    ]
    at = [prompt.index(s) for s in starts]
    assert at == sorted(at) and at[0] == 0
    for answer in ("The answer is 6.\n\n", "The answer is 5.\n\n", "The answer is 39.\n\n"):
        assert answer in prompt
    assert prompt.endswith("The answer is 8.\n\nQ: How many legs do 2 cats have?\nA:")
    assert prompt.count("Q: ") == 5 and prompt.count("\nA: ") == 4


def test_gsm8k_target_drops_calculator_and_states_the_answer(tok, tmp_path):
    train, _ = load(jsonl_config("gsm8k", tmp_path, GSM8K), tok)
    target = (
        "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in "
        "April and May. The answer is 72."
    )
    assert list(train.completion_ids[0]) == [*ids(tok, target), tok.eos_token_id]
    assert train.prompts[0] == gsm8k_prompt.few_shot_prompt(GSM8K[0]["question"])
    assert train.references == ["72", "5", "1200"]
    assert gsm8k.gsm8k_target("He has 1,200.\n#### 1,200")[0] == (
        "He has 1,200. The answer is 1,200."
    )


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("3 + 4 = 7. The answer is 7. Q: Tom has 9 apples", "7"),
        ("So 2 * 5 = 10. the answer is $1,000.", "1000"),
        ("5 + 5 = 10\n\nQ: What is 3 + 9? A: 12", "10"),  # no marker: the last number before Q:
        ("I do not know.", None),
    ],
)
def test_gsm8k_prediction(completion, answer):
    assert gsm8k.gsm8k_prediction(completion) == answer


# ---------------------------------------------------------------------------------- sources


def split_fields(split):
    return split.prompt_ids, split.completion_ids, split.references, split.prompts


def hf_rows(task, records):
    if task == "wmt_en_de":  # Hugging Face's wmt14 nests the pair under "translation"
        return [{"translation": r} for r in records]
    return records


@pytest.mark.parametrize("task", sorted(RECORDS))
def test_every_source_gives_the_same_splits(tok, tmp_path, task):
    datasets = pytest.importorskip("datasets")
    tfds = pytest.importorskip("tensorflow_datasets")
    train, evals = RECORDS[task], RECORDS[task][::-1]
    by_split = {"train": train, paper_tasks.DATASETS[task].eval_split: evals}

    jsonl = load(jsonl_config(task, tmp_path, train, evals), tok)

    hf_dir = str(tmp_path / "hf")
    datasets.DatasetDict(
        {k: datasets.Dataset.from_list(hf_rows(task, v)) for k, v in by_split.items()}
    ).save_to_disk(hf_dir)
    c = jsonl_config(task, tmp_path, train, evals, source="hf", dataset=hf_dir)
    c.data.train_file = c.data.eval_file = ""
    hf = load(c, tok)

    def as_data_source(builder, split, **kw):
        # What TFDS's array_record reader returns for Text features: bytes.
        return [{k: v.encode() for k, v in r.items()} for r in by_split[str(split)]]

    c.data.source, c.data.dataset = "tfds", ""
    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        via_tfds = load(c, tok)

    for a, b, d in zip(jsonl, hf, via_tfds, strict=True):
        assert split_fields(a) == split_fields(b) == split_fields(d)
    assert jsonl[1].prompt_ids[0] == jsonl[0].prompt_ids[-1]  # eval is the reversed records


@pytest.mark.parametrize(
    "task, hub_args",
    [
        ("xsum", [("EdinburghNLP/xsum", None, "train"), ("EdinburghNLP/xsum", None, "validation")]),
        ("wmt_en_de", [("wmt/wmt14", "de-en", "train"), ("wmt/wmt14", "de-en", "validation")]),
        ("gsm8k", [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]),
    ],
)
def test_hf_hub_defaults(tok, monkeypatch, task, hub_args):
    # The hub ids and configs each task asks `datasets.load_dataset` for (no download here).
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(hf_rows(task, RECORDS[task]))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    c = base_config()
    c.task, c.data.source, c.data.max_prompt_len, c.max_new_tokens = task, "hf", 2048, 256
    load(c, tok)
    assert calls == hub_args


def test_hf_dir_without_splits_is_an_error(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(XSUM).save_to_disk(str(tmp_path / "one"))
    c = base_config()
    c.task, c.data.source, c.data.dataset = "xsum", "hf", str(tmp_path / "one")
    with pytest.raises(ValueError, match="single Dataset without splits"):
        load(c, tok)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(XSUM)}).save_to_disk(
        str(tmp_path / "two")
    )
    c.data.dataset = str(tmp_path / "two")
    with pytest.raises(ValueError, match=r"no split 'validation' \(has: train\)"):
        load(c, tok)


def test_tfds_reads_the_real_builder_features(tok):
    # TFDS's own mock: random examples decoded through xsum's real feature spec.
    tfds = pytest.importorskip("tensorflow_datasets")
    c = base_config()
    c.task, c.data.source, c.data.max_prompt_len, c.data.strict = "xsum", "tfds", 4096, False
    with tfds.testing.mock_data(num_examples=5):
        train, evals = load(c, tok)
    assert 1 <= len(evals.prompt_ids) <= 5 and all(
        p.startswith("summarize: ") for p in train.prompts
    )
    assert all(isinstance(r, str) and r for r in train.references)


def xsum_like_builder(tfds, class_name: str):
    """A TFDS builder of xsum's features over XSUM (validation: its last record); TFDS registers
    it as the snake_case of `class_name`."""

    def _info(self):
        text = tfds.features.Text()
        features = tfds.features.FeaturesDict({"document": text, "summary": text})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(XSUM),
            "validation": self._generate_examples([XSUM[2]]),
        }

    def _generate_examples(self, records):
        yield from enumerate(records)

    body = dict(
        VERSION=tfds.core.Version("1.0.0"),
        _info=_info,
        _split_generators=_split_generators,
        _generate_examples=_generate_examples,
    )
    return type(class_name, (tfds.core.GeneratorBasedBuilder,), body)


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_reads_a_prepared_copy(tok, tmp_path, file_format):
    # A real TFDS dataset on disk, no mock. array_record: read without TensorFlow; tfrecord (TFDS's
    # default format) needs TensorFlow to write and read.
    tfds = pytest.importorskip("tensorflow_datasets")
    if file_format == "tfrecord":
        pytest.importorskip("tensorflow")
    name = f"gkd_test_{file_format}_xsum"
    builder = xsum_like_builder(tfds, f"GkdTest{file_format.title().replace('_', '')}Xsum")
    data_dir = str(tmp_path / "tfds")
    if file_format == "array_record":  # the way the error messages tell users to prepare data
        sources.main([name, "--data_dir", data_dir])
    else:
        builder(data_dir=data_dir, file_format=file_format).download_and_prepare()
    c = jsonl_config("xsum", tmp_path, XSUM, evals=[XSUM[2]])
    expected = load(c, tok)
    c.data.source, c.data.dataset, c.data.data_dir = "tfds", name, data_dir
    c.data.train_file = c.data.eval_file = ""
    got = load(c, tok)
    # TFDS shuffles examples by key hash when preparing: compare as sets of rows.
    for a, b in zip(expected, got, strict=True):
        assert sorted(zip(*split_fields(a), strict=True)) == sorted(
            zip(*split_fields(b), strict=True)
        )


def test_tfrecord_copy_without_tensorflow_names_the_fix(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def data_source(*args, **kw):
        raise NotImplementedError("Random access data source for file format tfrecord")

    def load(*args, **kw):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds, "data_source", data_source)
    monkeypatch.setattr(tfds, "load", load)
    with pytest.raises(ImportError, match="needs TensorFlow to read: pip install tensorflow"):
        list(sources.tfds_records("xsum", "validation"))


def test_tfds_unprepared_names_the_fix(tok, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    c = base_config()
    c.task, c.data.data_dir = "gsm8k", str(tmp_path)
    with pytest.raises(ValueError, match="python -m gkd_jax.data.sources gsm8k --data_dir=DIR"):
        load(c, tok)


# ------------------------------------------------------------------------------ bad records


def test_bad_records_name_file_and_line(tok, tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps(XSUM[0]),
        "{not json",
        json.dumps({"document": "x"}),
        json.dumps({"document": "y", "summary": " "}),
        json.dumps({"document": 3, "summary": "z"}),
        json.dumps(XSUM[1]),
    ]
    c = jsonl_config("xsum", tmp_path, XSUM)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        load(c, tok)
    msg = str(e.value)
    assert "4 of 6 records" in msg
    for reason, line in [
        ("malformed JSON", 2),
        ("missing field 'summary'", 3),
        ("empty field 'summary'", 4),
        ("field 'document' is not a string", 5),
    ]:
        assert f"{reason}: 1 at {path}:{line}" in msg
    c.data.strict = False
    train, _ = load(c, tok)
    assert train.references == ["A cat sat.", "Rain in Leeds."]


def test_gsm8k_answer_without_final_number_is_bad(tok, tmp_path):
    bad = [*GSM8K, {"question": "Why?", "answer": "Because."}]
    with pytest.raises(ValueError, match=r"answer does not end with '#### N': 1 at .*:4"):
        load(jsonl_config("gsm8k", tmp_path, bad), tok)


def test_overflow_truncation_and_caps(tok, tmp_path):
    c = jsonl_config("xsum", tmp_path, XSUM, max_prompt_len=12)
    with pytest.raises(ValueError, match="prompt longer than max_prompt_len=12"):
        load(c, tok)
    c.data.prompt_overflow = "truncate_left"
    c.max_new_tokens, c.data.train_examples, c.eval.num_examples = 5, 2, 1
    logged = []
    train, evals = load(c, tok, logged.append)
    # Reads no more records than it keeps, and counts what it cut.
    assert (
        "kept 2 of 2 records (0 bad, 2 completions truncated to max_completion_len=5, 2 "
        "prompts cut to their last max_prompt_len tokens)" in logged[0]
    )
    eos = tok.eos_token_id
    assert list(train.prompt_ids[0]) == [*ids(tok, "summarize: " + XSUM[0]["document"]), eos][-12:]
    assert list(train.completion_ids[0]) == ids(tok, "A cat sat.")[:5]  # cut: no EOS
    assert len(train.prompt_ids) == 2 and len(evals.prompt_ids) == 1


def test_truncate_right_keeps_the_start_and_the_closing_eos(tok, tmp_path):
    c = jsonl_config("xsum", tmp_path, XSUM, max_prompt_len=12, prompt_overflow="truncate_right")
    validate_config(c)
    logged = []
    train, _ = load(c, tok, logged.append)
    eos = tok.eos_token_id
    # T5 appends </s> after trimming: the first 11 tokens, then </s>.
    assert list(train.prompt_ids[0]) == [*ids(tok, "summarize: The cat sat on")[:11], eos]
    assert "3 prompts cut to their first max_prompt_len tokens" in logged[0]
    plain = byte_tokenizer(closing_eos=False)  # e.g. a decoder-only model's: nothing closes it
    examples, _ = paper_tasks.tokenize_records(
        [("r#0", XSUM[0])], xsum.format_xsum, plain, source="r", limit=1,
        max_prompt_len=12, max_completion_len=8, stop_ids=[eos],
        prompt_overflow="truncate_right",
    )  # fmt: skip
    assert list(examples[0][0]) == ids(plain, "summarize: The cat sat on")[:12]
    c.task = "chat"  # the chat loader has no truncate_right
    with pytest.raises(ValueError, match="config.data.prompt_overflow='truncate_right'"):
        validate_config(c)


def test_config_checks_source_and_files(tmp_path):
    c = base_config()
    c.task, c.data.source = "xsum", "jsonl"
    with pytest.raises(ValueError, match="config.data.train_file is empty"):
        validate_config(c)
    c.data.source, c.data.train_file = "tfds", "x.jsonl"
    with pytest.raises(ValueError, match="config.data.train_file='x.jsonl' is set"):
        validate_config(c)
    c.task = "chat"  # the chat task reads train_file whatever data.source says
    validate_config(c)


# ---------------------------------------------------------------------------------- metrics


def test_metric_wiring():
    summ, trans, gsm = get_task("xsum"), get_task("wmt_en_de"), get_task("gsm8k")
    refs = ["a cat sat on the mat", "rain fell in leeds today"]
    assert (summ.metric_name, trans.metric_name, gsm.metric_name) == ("rouge2", "bleu", "accuracy")
    assert summ.metric(refs, refs) == pytest.approx(100.0)
    assert summ.extra_metrics(refs, refs) == pytest.approx(
        {"rouge1": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}
    )
    assert summ.metric(["a dog sat on the mat", "rain fell"], refs) < 100.0
    de = ["Das Haus ist klein und alt.", "Ich mag keinen Tee am Morgen."]
    assert trans.metric(de, de) == pytest.approx(100.0)
    assert trans.metric(["Das Haus ist alt.", "Ich mag Tee."], de) < 100.0
    assert gsm.metric(["so 72. The answer is 72.", "The answer is 5."], ["72", "5"]) == 1.0
    assert gsm.metric(["The answer is 70.", "The answer is 5."], ["72", "5"]) == 0.5
    assert trans.extra_metrics is None and gsm.extra_metrics is None
