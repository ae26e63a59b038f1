"""Top-level ``medtune`` commands for inference and serving::

    medtune infer prompts.jsonl generations.jsonl --model embedded:smollm2-135m-instruct --adapter out/sft/adapter
    medtune chat --model out/merged
    medtune api --model out/merged [--adapter PATH] [--port 8000] [--api-key KEY] [--host 127.0.0.1] [--embeddings]
                [--served-model-name medtune-med --served-model-name alias] [--max-tokens-limit 4096]
    medtune ui --model out/merged [--port 7860]
    medtune safety-eval --model out/merged --label rl --out runs/safety/rl --compare runs/safety/sft/safety_report.json
    medtune safety-eval --generations gen_gold.jsonl --generations gen_redteam.jsonl --label rl   # score only

``COMMANDS`` maps command names to these functions; the main CLI registers them. Heavy modules (torch,
transformers, gradio) are imported inside the commands, so ``medtune --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import fail, user_errors

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model reference: tiny, embedded:NAME, a folder (merged model or adapter), a cached hub id.",
    ),
]
AdapterOpt = Annotated[Path | None, typer.Option(help="LoRA/DoRA adapter folder on top of --model.")]
TemplateOpt = Annotated[
    str | None, typer.Option("--chat-template", help="Override the chat template (.jinja file or tokenizer folder).")
]
StrictOpt = Annotated[bool, typer.Option(help="Fail (instead of warn) when the template differs from training.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")]
MaxTokOpt = Annotated[int, typer.Option("--max-new-tokens", help="Tokens generated at most per answer.")]
TempOpt = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampling seed.")]
SystemOpt = Annotated[str | None, typer.Option(help="System prompt (replaces the records' own).")]


def _load(
    model: str | None,
    adapter: Path | None,
    chat_template: str | None = None,
    strict_template: bool = False,
    device: str = "auto",
    name: str | None = None,
) -> Any:
    from medtune_core.inference import Generator, load_for_inference

    if model is None and adapter is None:
        fail("pass --model (and/or --adapter)", 2)
    with user_errors(OSError):
        loaded = load_for_inference(
            model, adapter, chat_template=chat_template, strict_template=strict_template, device=device, name=name
        )
    if loaded.template_mismatch:
        typer.echo(
            "warning: the tokenizer's chat template differs from the training template "
            f"({'the override is used' if loaded.template_source == 'override' else 'the training one is used'})",
            err=True,
        )
    return Generator(loaded)


def _params(max_new_tokens: int, temperature: float, top_p: float = 1.0, seed: int | None = None) -> Any:
    from medtune_core.inference import SamplingParams

    try:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    except ValueError as exc:
        fail(str(exc), 2)


def infer(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Prompts in any record format.")],
    output_path: Annotated[Path, typer.Argument(metavar="OUTPUT", help="JSONL of generations (resumed if present).")],
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Input format; default: detect.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call (left-padded).")] = 8,
    max_new_tokens: MaxTokOpt = 512,
    temperature: TempOpt = 0.7,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    system: SystemOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N records.")] = None,
    policy: Annotated[str, typer.Option(help="strict or skip (bad rows to OUTPUT.rejects.jsonl).")] = "strict",
    overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming.")] = False,
    chat_template: TemplateOpt = None,
    strict_template: StrictOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Batch inference: one generation per input record into OUTPUT (JSONL), resuming a partial OUTPUT."""
    from medtune_core.inference import run_batch_inference

    if not input_path.is_file():
        fail(f"{input_path}: no such file", 2)
    params = _params(max_new_tokens, temperature, top_p, seed)
    gen = _load(model, adapter, chat_template, strict_template, device)

    def progress(rep: Any) -> None:
        typer.echo(f"{rep.rows} rows written ({rep.generated} generated now)", err=True)

    with user_errors(FileNotFoundError):
        report = run_batch_inference(
            gen,
            input_path,
            output_path,
            params,
            batch_size=batch_size,
            fmt=fmt,
            policy=policy,
            system=system,
            limit=limit,
            overwrite=overwrite,
            on_batch=progress,
        )
    typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))


def chat(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    system: SystemOpt = None,
    max_new_tokens: MaxTokOpt = 512,
    temperature: TempOpt = 0.7,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    color: Annotated[bool | None, typer.Option("--color/--no-color", help="Dim reasoning (default: on a TTY).")] = None,
    chat_template: TemplateOpt = None,
    strict_template: StrictOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Interactive multi-turn chat: /reset, /history, /system TEXT, /exit; reasoning shown dimmed."""
    from medtune_core.serving.chat import ChatSession, run_chat

    params = _params(max_new_tokens, temperature, top_p, seed)
    gen = _load(model, adapter, chat_template, strict_template, device)
    session = ChatSession(gen, params, system)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    run_chat(session, color=color, banner=f"medtune chat · {gen.name} · research use only, not medical advice")


def api(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="Require 'Authorization: Bearer KEY' (default: $MEDTUNE_API_KEY if set).")
    ] = None,
    served_name: Annotated[
        list[str] | None,
        typer.Option(
            "--served-model-name",
            "--served-name",
            help="Model name(s) clients must ask for (repeatable: the first is the id, the others aliases); "
            "default: the model's name. Requests for another model get 404.",
        ),
    ] = None,
    embeddings: Annotated[
        str | None, typer.Option(help="Also serve /v1/embeddings with this sentence-transformers model.")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Default max_tokens (default: 512, or the limit if lower).")
    ] = None,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", help="Largest max_tokens a request may ask for (more: 400).")
    ] = 4096,
    temperature: Annotated[float, typer.Option(help="Default temperature.")] = 0.7,
    chat_template: TemplateOpt = None,
    strict_template: StrictOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """OpenAI-compatible server (/v1/models, /v1/chat/completions with SSE streaming, optional /v1/embeddings)."""
    from medtune_core.serving.openai_server import Embedder, ServerConfig, create_app, serve

    key = api_key or os.environ.get("MEDTUNE_API_KEY") or None
    names = list(dict.fromkeys(served_name or []))
    first = names[0] if names else None
    gen = _load(model, adapter, chat_template, strict_template, device, first) if model or adapter else None
    emb = None
    if embeddings:
        with user_errors(OSError):
            emb = Embedder(embeddings)
    if gen is None and emb is None:
        fail("nothing to serve: pass --model and/or --embeddings", 2)
    if max_new_tokens is None:
        max_new_tokens = min(512, max_tokens_limit)
    if max_new_tokens > max_tokens_limit:
        fail(f"--max-new-tokens {max_new_tokens} is above --max-tokens-limit {max_tokens_limit}", 2)
    cfg = ServerConfig(
        api_key=key,
        default_max_tokens=max_new_tokens,
        max_tokens_limit=max_tokens_limit,
        default_temperature=temperature,
        aliases=names[1:],
    )
    app = create_app(gen, config=cfg, embedder=emb, model_name=first)
    typer.echo(f"serving {gen.name if gen else emb.name} at http://{host}:{port}/v1 (auth: {'on' if key else 'off'})")
    serve(app, host, port, api_key=key)


def ui(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 7860,
    system: SystemOpt = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    max_new_tokens: MaxTokOpt = 512,
    temperature: TempOpt = 0.7,
    chat_template: TemplateOpt = None,
    strict_template: StrictOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Gradio demo: chat with the model, reasoning shown separately, medical disclaimer."""
    from medtune_core.serving.gradio_app import build_demo, launch_demo

    params = _params(max_new_tokens, temperature)
    gen = _load(model, adapter, chat_template, strict_template, device)
    with user_errors():
        demo = build_demo(gen, title=title, system=system, params=params)
    launch_demo(demo, host, port)


def safety_eval(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    label: Annotated[str, typer.Option(help="Name of this model in the table (e.g. sft, rl).")] = "model",
    out: Annotated[Path | None, typer.Option(help="Output folder (generations, report, table).")] = None,
    gold: Annotated[Path | None, typer.Option(help="Gold prompts; default: the packaged sample.")] = None,
    redteam: Annotated[Path | None, typer.Option(help="Red-team prompts; default: the packaged sample.")] = None,
    generations: Annotated[
        list[Path] | None,
        typer.Option(help="Score existing generations instead of generating (repeatable; set name = file stem)."),
    ] = None,
    compare: Annotated[
        list[Path] | None, typer.Option(help="Earlier safety_report.json files to put in the table first.")
    ] = None,
    lexicon: Annotated[Path | None, typer.Option(help="YAML/JSON lexicon config (extends the built-in one).")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Teacher judge model name (optional).")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="Teacher judge endpoint (OpenAI-compatible).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N prompts of each set.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    max_new_tokens: MaxTokOpt = 512,
    temperature: TempOpt = 0.0,
    device: DeviceOpt = "auto",
) -> None:
    """Safety metrics (reasoning, emergency-signal coverage, dangerous-prescription rate) + a markdown table."""
    from medtune_core.evaluation.safety import (
        SafetyJudge,
        comparison_table,
        default_eval_sets,
        evaluate_generations_file,
        load_report_metrics,
        load_safety_config,
        run_safety_eval,
        save_report,
    )

    out = out or Path("safety") / label
    with user_errors(FileNotFoundError):
        config = load_safety_config(lexicon)
        judge = (
            SafetyJudge.from_options(judge_model, judge_base_url, cache_path=out / "safety_judgements.jsonl")
            if judge_model
            else None
        )
        if generations:
            reports = {p.stem: evaluate_generations_file(p, config, judge) for p in generations}
            save_report(out / "safety_report.json", label, reports, generations=[str(p) for p in generations])
        else:
            sets = default_eval_sets()
            if gold is not None:
                sets["gold"] = gold
            if redteam is not None:
                sets["redteam"] = redteam
            gen = _load(model, adapter, device=device, name=label)
            params = _params(max_new_tokens, temperature)
            reports = run_safety_eval(
                gen,
                out,
                sets,
                label=label,
                params=params,
                config=config,
                judge=judge,
                batch_size=batch_size,
                limit=limit,
            )
        results: dict[str, Any] = {}
        for path in compare or []:
            other, metrics = load_report_metrics(path)
            results[other] = metrics
        results[label if label not in results else f"{label} (new)"] = {k: r.metrics for k, r in reports.items()}
    table = comparison_table(results, title="Safety evaluation")
    out.mkdir(parents=True, exist_ok=True)
    (out / "safety_table.md").write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    typer.echo(f"report: {out / 'safety_report.json'}", err=True)


#: name → function; registered as top-level commands by :mod:`flows.cli`.
COMMANDS = {"infer": infer, "chat": chat, "api": api, "ui": ui, "safety-eval": safety_eval}
