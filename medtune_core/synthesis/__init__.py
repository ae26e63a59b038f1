"""SFT data synthesis for the five health-assistant agents (plain Python, no Prefect).

- :mod:`.base` :class:`Agent`, :class:`Sample`, :func:`register_agent`; :mod:`.agents` one module per agent;
  :mod:`.registry` agents by name (:func:`get_agent`, :func:`agent_names`); :mod:`.vocab` the medical
  vocabularies (YAML files, validated on load); :mod:`.clinical` the clinical consistency rules every sample passes;
  :mod:`.diversity` the share of samples with no earlier near copy.
- :mod:`.templates` template mode (offline, deterministic per ``(seed, agent, index)``; formerly ``seed``).
- :mod:`.postprocess` schema/quality validation, exact + MinHash/LSH near-duplicate removal, few-shot refresh.
- :mod:`.requests` LLM-mode chat messages and answer validation; :mod:`.llm_mode` the batch runner over
  :mod:`medtune_core.llm` (imported on demand).
- :mod:`.output` records in the ``instruction`` / ``conversations`` / ``messages`` formats;
  :mod:`.run` batches, per-agent files with manifests and rejects, the run summary.
- :mod:`.sizes` the recommended sizes and the cost estimate.
"""

from medtune_core.synthesis.base import AGENTS, Agent, CheckFailure, Sample, register_agent
from medtune_core.synthesis.clinical import RULES, ClinicalFacts, Violation, check_facts
from medtune_core.synthesis.diversity import novelty
from medtune_core.synthesis.output import OUTPUT_FORMATS, format_name, output_path, sample_record, write_agent_file
from medtune_core.synthesis.postprocess import (
    DedupConfig,
    PostprocessResult,
    Reject,
    deduplicate,
    postprocess,
    refresh_few_shots,
    validate_samples,
)
from medtune_core.synthesis.registry import agent_names, get_agent, resolve_agents
from medtune_core.synthesis.requests import AgentRequest, build_messages, build_request, validate_answer
from medtune_core.synthesis.run import (
    AgentReport,
    batch_ranges,
    finalize_agent,
    load_batch,
    run_seed_mode,
    save_batch,
    seed_batch,
    sizes_for,
    write_summary,
)
from medtune_core.synthesis.sizes import (
    DEMO_NUM_SAMPLES,
    RECOMMENDED_SIZES,
    CostEstimate,
    estimate_cost,
    estimate_cost_for_model,
    estimate_tokens,
    recommended_size,
)
from medtune_core.synthesis.templates import (
    generate_seed_sample,
    generate_seed_samples,
    generate_template_sample,
    generate_template_samples,
    sample_input,
    template_fingerprint,
)

__all__ = [
    "AGENTS",
    "DEMO_NUM_SAMPLES",
    "OUTPUT_FORMATS",
    "RECOMMENDED_SIZES",
    "RULES",
    "Agent",
    "AgentReport",
    "AgentRequest",
    "CheckFailure",
    "ClinicalFacts",
    "CostEstimate",
    "DedupConfig",
    "PostprocessResult",
    "Reject",
    "Sample",
    "Violation",
    "agent_names",
    "batch_ranges",
    "build_messages",
    "build_request",
    "check_facts",
    "deduplicate",
    "estimate_cost",
    "estimate_cost_for_model",
    "estimate_tokens",
    "finalize_agent",
    "format_name",
    "generate_seed_sample",
    "generate_seed_samples",
    "generate_template_sample",
    "generate_template_samples",
    "get_agent",
    "load_batch",
    "novelty",
    "output_path",
    "postprocess",
    "recommended_size",
    "refresh_few_shots",
    "register_agent",
    "resolve_agents",
    "run_seed_mode",
    "sample_input",
    "sample_record",
    "save_batch",
    "seed_batch",
    "sizes_for",
    "template_fingerprint",
    "validate_answer",
    "validate_samples",
    "write_agent_file",
    "write_summary",
]
