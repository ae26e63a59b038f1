"""Safety evaluation tasks: generate answers on the gold and red-team sets, score them, publish a table.

``safety_eval`` is what the ``rlhf-training`` flow calls after each stage::

    sft = safety_eval(model=str(base), adapter=sft_adapter, label="sft", out_dir=f"{run}/safety/sft",
                      options=params.safety)
    rl = safety_eval(model=str(base), adapter=rl_adapter, label="rl", out_dir=f"{run}/safety/rl",
                     options=params.safety, compare=[sft["report"]])

Each call writes ``out_dir/generations_<set>.jsonl`` (resumable), ``out_dir/safety_report.json`` and
``out_dir/safety_table.md``, and publishes the table (the earlier stages' reports in ``compare`` first, then this one)
as the markdown artifact ``safety-<label>``. ``safety_compare`` publishes a table of any finished reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel, ConfigDict, Field

from medtune_core.dataio import atomic_write
from medtune_core.hashing import file_sha256
from medtune_core.params import HttpUrl
from tasks.artifacts import publish_markdown
from tasks.base import medtune_task
from tasks.caching import CONTENT_AWARE


class SafetyEvalOptions(BaseModel):
    """How a stage's model is evaluated for safety (a field of the flow's parameter model)."""

    model_config = ConfigDict(extra="forbid")

    sets: dict[str, str] | None = Field(
        None, description="Set name → prompts file (any record format); default: the packaged gold and red-team sets."
    )
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N prompts of each set.")
    max_new_tokens: int = Field(512, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy (reproducible).")
    batch_size: int = Field(8, ge=1, le=256)
    lexicon_config: str | None = Field(None, description="YAML/JSON file extending or replacing the lexicons.")
    judge_model: str | None = Field(None, description="Teacher judge model (OpenAI-compatible); none: lexicon only.")
    judge_base_url: HttpUrl | None = Field(None, description="Judge endpoint; default OPENAI_BASE_URL.")


@dataclass
class ScoringVersion(CachePolicy):
    """Key on what turns answers into figures: the packaged lexicons, the ``lexicon_config`` file's contents and the
    scoring code. An edited lexicon (packaged or the run's own file) must re-score, not hand back old figures."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        import medtune_core.evaluation.safety as safety_mod
        import medtune_core.inference.think as think_mod

        opts = (inputs or {}).get("options")
        lexicon_config = opts.get("lexicon_config") if isinstance(opts, dict) else getattr(opts, "lexicon_config", None)
        files = [*sorted(safety_mod.LEXICON_DIR.glob("*.yaml")), Path(safety_mod.__file__), Path(think_mod.__file__)]
        if lexicon_config:
            files.append(Path(lexicon_config))
        return hash_objects([(f.name, file_sha256(f) if f.is_file() else None) for f in files], raise_on_failure=True)


def _compare_table(report_paths: list[str], title: str) -> str:
    from medtune_core.evaluation.safety import comparison_table, load_report_metrics

    results: dict[str, Any] = {}
    for path in report_paths:
        label, metrics = load_report_metrics(path)
        while label in results:
            label += "'"
        results[label] = metrics
    return comparison_table(results, title=title)


@medtune_task(name="safety-eval", retry="gpu", cache_policy=CONTENT_AWARE + ScoringVersion())
def safety_eval(
    model: str | Path,
    label: str,
    out_dir: str,
    adapter: Path | None = None,
    options: SafetyEvalOptions | None = None,
    compare: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate one model (``model`` reference, plus ``adapter``) and publish the comparison table.

    Returns ``{"report", "table", "metrics": {set: {...}}}``; cached on the adapter's contents, the options and the
    lexicons and scoring code (:class:`ScoringVersion`).
    """
    from medtune_core.evaluation.safety import SafetyJudge, load_safety_config, run_safety_eval
    from medtune_core.inference import Generator, SamplingParams, load_for_inference

    opts = options or SafetyEvalOptions()
    logger = get_run_logger()
    out = Path(out_dir)
    config = load_safety_config(opts.lexicon_config)
    judge = None
    if opts.judge_model:
        judge = SafetyJudge.from_options(
            opts.judge_model, opts.judge_base_url, cache_path=out / "safety_judgements.jsonl"
        )
    generator = Generator(load_for_inference(model, adapter, name=label))
    if generator.loaded.template_mismatch:
        logger.warning("%s: chat template differs from the training template (see the log above)", label)
    params = SamplingParams(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature)
    reports = run_safety_eval(
        generator,
        out,
        opts.sets,
        label=label,
        params=params,
        config=config,
        judge=judge,
        batch_size=opts.batch_size,
        limit=opts.limit,
    )
    report_path = out / "safety_report.json"
    table = _compare_table([*(compare or []), str(report_path)], f"Safety evaluation: {label}")
    table_path = out / "safety_table.md"
    with atomic_write(table_path) as fh:
        fh.write(table)
    publish_markdown(f"safety-{label}", table, description=f"safety metrics after {label}")
    for name, rep in reports.items():
        m = rep.metrics
        logger.info(
            "%s / %s: reasoning %.1f%%, emergency %.1f%%, dangerous %.1f%% (n=%d)",
            label,
            name,
            100 * (m.reasoning_coverage or 0),
            100 * (m.emergency_coverage or 0),
            100 * (m.dangerous_rate or 0),
            m.n,
        )
    return {
        "report": str(report_path),
        "table": str(table_path),
        "metrics": {name: rep.metrics.to_dict() for name, rep in reports.items()},
    }


@medtune_task(name="safety-compare", cache=False)
def safety_compare(reports: list[str], key: str = "safety-comparison", title: str = "Safety comparison") -> str:
    """Publish one markdown table of several finished reports (e.g. SFT vs DPO vs RL); returns the markdown."""
    table = _compare_table(reports, title)
    publish_markdown(key, table, description="safety metrics per stage")
    return table
