"""medtune's own sample data: small, hand-written, medically reviewed rows in every supported format.

The files ship as package data so demos and tests never need a download. ``SAMPLES`` maps a short name to a
:class:`SampleInfo` (relative path, format name, record kind, language and row count); ``sample_path(name)``
returns the file. Every file reads with :class:`medtune_core.dataio.DatasetReader` under the strict policy,
auto-detected as the format given here. See ``README.md`` in this folder for what each file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medtune_core.errors import MedtuneError


@dataclass(frozen=True, slots=True)
class SampleInfo:
    """One sample file: where it is (relative to :func:`samples_dir`), its format, kind, language and size."""

    name: str
    path: str
    format: str
    kind: str
    language: str
    rows: int


def _info(name: str, path: str, fmt: str, kind: str, language: str, rows: int) -> tuple[str, SampleInfo]:
    return name, SampleInfo(name, path, fmt, kind, language, rows)


SAMPLES: dict[str, SampleInfo] = dict(
    [
        _info("sft_alpaca_zh", "sft_alpaca_zh.jsonl", "alpaca", "chat", "zh", 27),
        _info("sft_alpaca_en", "sft_alpaca_en.jsonl", "alpaca", "chat", "en", 14),
        _info("sft_sharegpt_zh", "sft_sharegpt_zh.jsonl", "sharegpt", "chat", "zh", 28),
        _info("sft_sharegpt_en", "sft_sharegpt_en.jsonl", "sharegpt", "chat", "en", 20),
        _info("sft_messages_zh", "sft_messages_zh.jsonl", "messages", "chat", "zh", 14),
        _info("sft_messages_en", "sft_messages_en.jsonl", "messages", "chat", "en", 14),
        _info("preference_zh", "preference_zh.jsonl", "preference", "preference", "zh", 24),
        _info("preference_medical_zh", "preference_medical_zh.jsonl", "preference_medical", "preference", "zh", 17),
        _info("preference_sharegpt_zh", "preference_sharegpt_zh.jsonl", "preference_sharegpt", "preference", "zh", 14),
        _info("preference_en", "preference_en.jsonl", "preference", "preference", "en", 20),
        _info("pretrain_zh_txt", "pretrain_zh.txt", "txt", "text", "zh", 41),
        _info("pretrain_zh", "pretrain_zh.jsonl", "text", "text", "zh", 24),
        _info("pretrain_en", "pretrain_en.jsonl", "text", "text", "en", 20),
        _info("qa_zh", "qa_zh.jsonl", "qa_zh", "chat", "zh", 26),
        _info("qa", "qa.jsonl", "qa", "chat", "mixed", 26),
        _info(
            "medqa_mainland_train",
            "medqa/questions/Mainland/4_options/phrases_no_exclude_train.jsonl",
            "medqa",
            "mcq",
            "zh",
            32,
        ),
        _info(
            "medqa_mainland_dev",
            "medqa/questions/Mainland/4_options/phrases_no_exclude_dev.jsonl",
            "medqa",
            "mcq",
            "zh",
            10,
        ),
        _info(
            "medqa_mainland_test",
            "medqa/questions/Mainland/4_options/phrases_no_exclude_test.jsonl",
            "medqa",
            "mcq",
            "zh",
            10,
        ),
        _info("medqa_taiwan_train", "medqa/questions/Taiwan/train.jsonl", "medqa", "mcq", "zh-Hant", 12),
        _info("medqa_taiwan_dev", "medqa/questions/Taiwan/dev.jsonl", "medqa", "mcq", "zh-Hant", 6),
        _info("medqa_taiwan_test", "medqa/questions/Taiwan/test.jsonl", "medqa", "mcq", "zh-Hant", 6),
        _info(
            "medqa_us_4opt_train",
            "medqa/questions/US/4_options/phrases_no_exclude_train.jsonl",
            "medqa",
            "mcq",
            "en",
            30,
        ),
        _info(
            "medqa_us_4opt_dev", "medqa/questions/US/4_options/phrases_no_exclude_dev.jsonl", "medqa", "mcq", "en", 10
        ),
        _info(
            "medqa_us_4opt_test", "medqa/questions/US/4_options/phrases_no_exclude_test.jsonl", "medqa", "mcq", "en", 10
        ),
        _info("medqa_us_train", "medqa/questions/US/train.jsonl", "medqa", "mcq", "en", 12),
        _info("medqa_us_dev", "medqa/questions/US/dev.jsonl", "medqa", "mcq", "en", 6),
        _info("medqa_us_test", "medqa/questions/US/test.jsonl", "medqa", "mcq", "en", 6),
        _info("medqa_options_list", "medqa/options_list_sample.jsonl", "medqa", "mcq", "zh", 8),
        _info("benchmark_clinical_medicine", "benchmark/clinical_medicine_val.csv", "mcq_csv", "mcq", "zh", 24),
        _info("benchmark_basic_medicine", "benchmark/basic_medicine_val.csv", "mcq_csv", "mcq", "zh", 24),
        _info("benchmark_physician", "benchmark/physician_val.csv", "mcq_csv", "mcq", "zh", 24),
        _info("benchmark_cmmlu_anatomy", "benchmark/cmmlu_style_anatomy.csv", "mcq_csv", "mcq", "zh", 8),
        _info("pool_zh", "pool/medical_pool_zh.jsonl", "sharegpt", "chat", "zh", 263),
        _info("pool_en", "pool/medical_pool_en.jsonl", "sharegpt", "chat", "en", 80),
        _info("reasoning_zh", "reasoning_zh.jsonl", "alpaca", "chat", "zh", 41),
        _info("redteam_zh", "redteam_zh.jsonl", "alpaca", "chat", "zh", 12),
    ]
)


def samples_dir() -> Path:
    """The folder holding the sample files."""
    return Path(__file__).resolve().parent


def sample_path(name: str) -> Path:
    """The path of the sample file called ``name`` (a key of :data:`SAMPLES`)."""
    try:
        info = SAMPLES[name]
    except KeyError:
        raise MedtuneError(f"unknown sample {name!r}; known samples: {', '.join(sorted(SAMPLES))}") from None
    return samples_dir() / info.path


__all__ = ["SAMPLES", "SampleInfo", "sample_path", "samples_dir"]
