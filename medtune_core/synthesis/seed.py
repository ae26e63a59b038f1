"""Template (seed) mode: samples built offline from the vocabularies, deterministic for a given seed.

Every sample has its own random generator seeded from ``(seed, agent, index)``, so sample ``i`` is the same
whether it is generated alone, in a batch or in a full run: batches can be regenerated independently.
"""

from __future__ import annotations

import random

from medtune_core.synthesis.base import Agent, Sample, get_agent


def sample_rng(seed: int, agent: str, index: int, *, source: str = "seed") -> random.Random:
    """The generator of one sample (string seeds hash with SHA-512: stable across processes)."""
    return random.Random(f"medtune-synthesis:{source}:{seed}:{agent}:{index}")


def sample_input(agent: Agent | str, seed: int, index: int, *, source: str = "seed") -> dict:
    """The input of sample ``index`` (LLM mode asks the model to answer these)."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    return a.sample_input(sample_rng(seed, a.name, index, source=source))


def generate_seed_sample(agent: Agent | str, seed: int, index: int) -> Sample:
    a = get_agent(agent) if isinstance(agent, str) else agent
    rng = sample_rng(seed, a.name, index)
    inp = a.sample_input(rng)
    out = a.template_output(inp, rng)
    return Sample(agent=a.name, index=index, input=inp, output=out, source="seed", meta={"seed": seed})


def generate_seed_samples(agent: Agent | str, n: int, seed: int, *, start: int = 0) -> list[Sample]:
    """Samples ``start .. start+n-1`` of ``agent`` for ``seed``."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    return [generate_seed_sample(a, seed, i) for i in range(start, start + n)]
