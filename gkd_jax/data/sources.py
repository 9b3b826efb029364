"""Record readers for the paper's datasets: TFDS, Hugging Face `datasets`, local JSONL.

Each reader yields `(location, record)` pairs: `location` names the record for error messages
("file.jsonl:LINE", "xsum[validation]#INDEX") and `record` is a dict of plain Python values
(text as `str`), or the exception a malformed JSON line raised, so that the caller reports it
with its location instead of stopping at the first one.

TFDS data are prepared once, as array_record (read without TensorFlow):
`python -m gkd_jax.data.sources xsum --data_dir=DIR [--manual_dir=M]`.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Iterator

from gkd_jax.data.records import read_records

SOURCES = ("tfds", "hf", "jsonl")

Records = Iterator[tuple[str, "dict | Exception"]]

# Modules that register the paper's TFDS builders. `import tensorflow_datasets` registers none
# of them without TensorFlow installed, yet reading an array_record copy needs no TensorFlow.
_TFDS_MODULES = {
    "xsum": "tensorflow_datasets.summarization.xsum",
    "wmt14_translate": "tensorflow_datasets.translate.wmt14",
    "gsm8k": "tensorflow_datasets.text.gsm8k.gsm8k",
}


def jsonl_records(path: str) -> Records:
    """One JSON object per line of `path` (blank lines skipped), located as "path:LINE"."""
    if not path.endswith((".jsonl", ".json")):
        raise ValueError(f"{path}: expected a .jsonl file (one JSON object per line)")
    yield from read_records(path)


def hf_records(dataset: str, split: str) -> Records:
    """Rows of a Hugging Face dataset: a `save_to_disk` directory of a DatasetDict, or
    "NAME[:CONFIG]" for `datasets.load_dataset` (e.g. "wmt/wmt14:de-en", "openai/gsm8k:main")."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "config.data.source='hf' needs the `datasets` package: pip install datasets"
        ) from e
    if os.path.isdir(dataset):
        ds = datasets.load_from_disk(dataset)
        if not isinstance(ds, datasets.DatasetDict):
            # One table would serve as both the train and the eval split.
            raise ValueError(
                f"config.data.dataset={dataset!r} holds a single Dataset without splits: save a "
                f"DatasetDict with a {split!r} split (DatasetDict({{'{split}': ds, ...}}))"
            )
        if split not in ds:
            raise ValueError(f"{dataset}: no split {split!r} (has: {', '.join(ds.keys())})")
        ds, label = ds[split], f"{dataset}[{split}]"
    else:
        name, _, config = dataset.partition(":")
        ds, label = datasets.load_dataset(name, config or None, split=split), f"{name}[{split}]"
    for i, rec in enumerate(ds):
        yield f"{label}#{i}", _plain(rec)


def _import_tfds(name: str):
    """tensorflow_datasets, with `name`'s builder registered (see _TFDS_MODULES)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "config.data.source='tfds' needs tensorflow-datasets: pip install 'gkd_jax[tfds]' "
            "(or set config.data.source to 'hf' or 'jsonl')"
        ) from e
    module = _TFDS_MODULES.get(name.split("/")[0].split(":")[0])
    if module:
        importlib.import_module(module)
    return tfds


def _prepare_hint(name: str) -> str:
    return (
        f"prepare it once with `python -m gkd_jax.data.sources {name} --data_dir=DIR` (an "
        "array_record copy; set config.data.data_dir=DIR)"
    )


def tfds_records(name: str, split: str, data_dir: str = "") -> Records:
    """Examples of a prepared TFDS dataset, as plain dicts (bytes decoded to `str`).

    An array_record copy is read with `tfds.data_source` (no TensorFlow needed); a TFRecord
    copy (TFDS's default format) with `tfds.load`, which needs TensorFlow. Nothing is
    downloaded here: see `prepare_tfds`."""
    tfds = _import_tfds(name)
    where = f"tfds {name}[{split}] (data_dir={data_dir or 'the TFDS default'})"
    try:
        examples = _open_tfds(tfds, name, split, data_dir or None)
    except ImportError as e:  # TFRecord without TensorFlow
        raise ImportError(
            f"{where} is stored as TFRecord, which needs TensorFlow to read: pip install "
            f"tensorflow, or {_prepare_hint(name)}"
        ) from e
    except Exception as e:  # not prepared, unknown split, ...: say how to get the data
        raise ValueError(
            f"{where} could not be read: {e}\nTo fix: {_prepare_hint(name)}, or set "
            "config.data.source='hf' / 'jsonl'"
        ) from e
    label = f"{name}[{split}]"
    for i, ex in enumerate(examples):
        yield f"{label}#{i}", _plain(ex)


def prepare_tfds(name: str, data_dir: str, manual_dir: str = "") -> None:
    """Download and prepare TFDS dataset `name` in `data_dir` as array_record, the format that
    `tfds_records` reads without TensorFlow (once; a prepared copy is left as it is).

    Some builders need more: TFDS's xsum reads its files with TensorFlow (pip install
    tensorflow) and wants the XSum archive downloaded by hand into `manual_dir` (see the
    builder's MANUAL_DOWNLOAD_INSTRUCTIONS)."""
    tfds = _import_tfds(name)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=config)


def _open_tfds(tfds, name: str, split: str, data_dir: str | None) -> Iterator[dict]:
    try:
        ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        return _in_batches(ds)
    except NotImplementedError:  # prepared as TFRecord: no random access without TensorFlow
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
        return iter(tfds.as_numpy(ds))


def _in_batches(ds, size: int = 1024) -> Iterator[dict]:
    # ArrayRecord's batched read is ~2.5x faster than one example at a time.
    get = getattr(ds, "__getitems__", None)
    for start in range(0, len(ds), size):
        rows = range(start, min(start + size, len(ds)))
        try:
            batch = get(list(rows)) if get else [ds[i] for i in rows]
        except TypeError:  # tfds.testing.mock_data's source has no working batched read
            get, batch = None, [ds[i] for i in rows]
        yield from batch


def _plain(value):
    """bytes -> str and numpy scalars -> Python values, through nested dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _plain(value.item())
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=prepare_tfds.__doc__)
    parser.add_argument("name", help="TFDS name, e.g. xsum, wmt14_translate/de-en, gsm8k")
    parser.add_argument("--data_dir", required=True, help="then config.data.data_dir")
    parser.add_argument("--manual_dir", default="", help="hand-downloaded files (xsum)")
    args = parser.parse_args(argv)
    prepare_tfds(args.name, args.data_dir, args.manual_dir)


if __name__ == "__main__":
    main()
