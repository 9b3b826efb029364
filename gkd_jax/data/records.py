"""Records, whatever their source: reading them, rejecting bad ones, and reporting both.

A record is a dict of plain Python values read from a file or a dataset, with a location that
names it in messages ("file.jsonl:LINE", "dataset[split]#INDEX"). A task's formatter raises
`BadRecord` for one it cannot use; the loader counts it in a `DataReport` (by reason, with its
location) instead of stopping at the first, so that one run shows every bad record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

_SHOWN = 3  # locations shown per reason in summaries and errors

# An over-long prompt: a bad record ("error"), or keep its last max_prompt_len tokens.
PROMPT_OVERFLOW = ("error", "truncate_left")


class BadRecord(Exception):
    """A record the task cannot use: `reason` groups it in the report, `detail` is its own."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass
class DataReport:
    source: str
    read: int = 0
    kept: int = 0
    problems: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    truncated_completions: int = 0
    max_completion_len: int | None = None
    truncated_prompts: int = 0
    kept_end: str = "last"  # which end of an over-long prompt survives ("truncate_left": last)

    @property
    def bad(self) -> int:
        return sum(len(locs) for locs in self.problems.values())

    def add_problem(self, location: str, reason: str, detail: str = "") -> None:
        """A bad record at `location`, grouped by `reason`."""
        self.problems.setdefault(reason, []).append(
            f"{location} ({detail})" if detail else location
        )

    def problem_lines(self) -> list[str]:
        lines = []
        for reason, locs in self.problems.items():
            more = f"; ... and {len(locs) - _SHOWN} more" if len(locs) > _SHOWN else ""
            lines.append(f"  {reason}: {len(locs)} at {'; '.join(locs[:_SHOWN])}{more}")
        return lines

    def headline(self) -> str:
        trunc = f"{self.truncated_completions} completions truncated"
        if self.max_completion_len is not None:
            trunc += f" to max_completion_len={self.max_completion_len}"
        if self.truncated_prompts:
            trunc += (
                f", {self.truncated_prompts} prompts cut to their {self.kept_end} "
                "max_prompt_len tokens"
            )
        kept = f"kept {self.kept} of {self.read} records"
        return f"data: {self.source}: {kept} ({self.bad} bad, {trunc})"

    def summary(self) -> str:
        return "\n".join([self.headline(), *self.problem_lines()])

    __str__ = summary


def text_fields(rec: object, *names: str) -> list[str]:
    """The non-empty string fields `names` of a record, or BadRecord saying what is wrong."""
    if not isinstance(rec, dict):
        raise BadRecord("record is not a JSON object", type(rec).__name__)
    values = []
    for name in names:
        if name not in rec or rec[name] is None:
            raise BadRecord(f"missing field {name!r}", f"has: {', '.join(map(repr, rec))}")
        if not isinstance(rec[name], str):
            raise BadRecord(f"field {name!r} is not a string", type(rec[name]).__name__)
        if not rec[name].strip():
            raise BadRecord(f"empty field {name!r}")
        values.append(rec[name])
    return values


def _import_datasets(spec: str):
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"reading {spec!r} needs the `datasets` package: pip install datasets"
        ) from e
    return datasets


def read_records(spec: str, *, split: str = "train") -> Iterator[tuple[str, dict | Exception]]:
    """(location, record) for each record of `spec`; malformed JSON lines yield the error.

    `spec`: a .jsonl / .json file, a `save_to_disk` directory (a DatasetDict picks `split`; a
    single Dataset is used whole), or "hf:NAME[:CONFIG]" for `datasets.load_dataset`.
    """
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        ds = _import_datasets(spec).load_dataset(name, config or None, split=split)
        for i, rec in enumerate(ds):
            yield f"{spec[3:]}[{split}]#{i}", rec
    elif os.path.isdir(spec):
        datasets = _import_datasets(spec)
        ds = datasets.load_from_disk(spec)
        prefix = spec
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{spec}: no split {split!r} (has: {', '.join(ds.keys())})")
            ds, prefix = ds[split], f"{spec}[{split}]"
        for i, rec in enumerate(ds):
            yield f"{prefix}#{i}", rec
    elif spec.endswith((".jsonl", ".json")):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"data file not found: {spec}")
        with open(spec, encoding="utf-8") as f:
            text = f.read()
        if spec.endswith(".json") and text.lstrip().startswith("["):
            try:
                records = json.loads(text)
            except json.JSONDecodeError as e:
                yield f"{spec}:{e.lineno}", e
                return
            for i, rec in enumerate(records):
                yield f"{spec}#{i}", rec
            return
        # JSON lines (also what HF's json loader accepts in .json files).
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield f"{spec}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{spec}:{lineno}", e
    else:
        raise ValueError(
            f"unsupported data source {spec!r}: expected a .jsonl/.json file, a directory written "
            "by datasets' save_to_disk, or hf:NAME[:CONFIG]"
        )
