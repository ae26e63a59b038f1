"""SFT data synthesis for the five health-assistant agents of seed 0 (plain Python, no Prefect).

- :mod:`.base` the agent registry (:func:`get_agent`, :func:`agent_names`, :class:`Agent`, :class:`Sample`);
  :mod:`.agents` one module per agent; :mod:`.vocab` the medical vocabularies.
- :mod:`.seed` template mode (offline, deterministic per ``(seed, agent, index)``).
- :mod:`.postprocess` schema/quality validation, exact + MinHash/LSH near-duplicate removal, few-shot refresh.
- :mod:`.requests` LLM-mode chat messages and answer validation; :mod:`.llm_mode` the batch runner over
  :mod:`medtune_core.llm` (imported on demand).
- :mod:`.output` records in the ``instruction`` / ``conversations`` / ``messages`` formats;
  :mod:`.run` batches, per-agent files with manifests and rejects, the run summary.
- :mod:`.sizes` seed 0's recommended sizes and the cost estimate.
"""

from medtune_core.synthesis.base import (
    AGENTS,
    Agent,
    CheckFailure,
    Sample,
    agent_names,
    get_agent,
    register_agent,
    resolve_agents,
)
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
from medtune_core.synthesis.seed import generate_seed_sample, generate_seed_samples, sample_input
from medtune_core.synthesis.sizes import (
    DEMO_NUM_SAMPLES,
    RECOMMENDED_SIZES,
    CostEstimate,
    estimate_cost,
    estimate_cost_for_model,
    estimate_tokens,
    recommended_size,
)

__all__ = [
    "AGENTS",
    "DEMO_NUM_SAMPLES",
    "OUTPUT_FORMATS",
    "RECOMMENDED_SIZES",
    "Agent",
    "AgentReport",
    "AgentRequest",
    "CheckFailure",
    "CostEstimate",
    "DedupConfig",
    "PostprocessResult",
    "Reject",
    "Sample",
    "agent_names",
    "batch_ranges",
    "build_messages",
    "build_request",
    "deduplicate",
    "estimate_cost",
    "estimate_cost_for_model",
    "estimate_tokens",
    "finalize_agent",
    "format_name",
    "generate_seed_sample",
    "generate_seed_samples",
    "get_agent",
    "load_batch",
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
    "validate_answer",
    "validate_samples",
    "write_agent_file",
    "write_summary",
]
