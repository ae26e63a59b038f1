"""Inference: load a trained model with its training chat template, generate in batches or as a stream, split
``<think>`` reasoning blocks, run resumable batch inference from any record format.

    from medtune_core.inference import Generator, SamplingParams, load_for_inference, run_batch_inference

    gen = Generator(load_for_inference("embedded:smollm2-135m-instruct", adapter="out/sft/adapter"))
    gen.generate([[{"role": "user", "content": "头痛怎么办？"}]], SamplingParams(temperature=0))
    run_batch_inference(gen, "prompts.jsonl", "generations.jsonl", batch_size=8)
"""

from medtune_core.inference.batch import (
    BatchReport,
    Prompt,
    prompt_of,
    read_generations,
    run_batch_inference,
    scan_output,
)
from medtune_core.inference.generate import Generation, GenerationStream, Generator, SamplingParams, normalize_messages
from medtune_core.inference.loader import LoadedModel, is_adapter_dir, load_for_inference
from medtune_core.inference.think import (
    ThinkSplit,
    ThinkStreamParser,
    copied_from,
    reasoning_status,
    split_think,
    strip_think,
    valid_reasoning,
)

__all__ = [
    "BatchReport",
    "Generation",
    "GenerationStream",
    "Generator",
    "LoadedModel",
    "Prompt",
    "SamplingParams",
    "ThinkSplit",
    "ThinkStreamParser",
    "copied_from",
    "is_adapter_dir",
    "load_for_inference",
    "normalize_messages",
    "prompt_of",
    "read_generations",
    "reasoning_status",
    "run_batch_inference",
    "scan_output",
    "split_think",
    "strip_think",
    "valid_reasoning",
]
