"""Template mode: samples built offline from the vocabularies, deterministic for a given random seed.

Every sample has its own random generator seeded from ``(seed, agent, index)``, so sample ``i`` is the same
whether it is generated alone, in a batch or in a full run: batches can be regenerated independently. (The original
scripts called this "seed mode"; here ``seed`` means only the random seed, and ``mode=seed`` is kept as an
alias of ``mode=template``.)
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import sys
from collections.abc import Sequence

from medtune_core.synthesis import base, clinical
from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.base import TEMPLATE_VERSION, Agent, Sample
from medtune_core.synthesis.postprocess import PostprocessResult, validate_samples
from medtune_core.synthesis.registry import get_agent
from medtune_core.synthesis.vocab import models as vocab_models


def sample_rng(seed: int, agent: str, index: int, *, source: str = "seed") -> random.Random:
    """The generator of one sample (string seeds hash with SHA-512: stable across processes).

    ``source`` is part of the key (``"seed"`` for template samples, ``"llm"`` for LLM inputs); the word ``seed``
    stays in the key so every template sample keeps the value it had."""
    return random.Random(f"medtune-synthesis:{source}:{seed}:{agent}:{index}")


def sample_input(agent: Agent | str, seed: int, index: int, *, source: str = "seed") -> dict:
    """The input of sample ``index`` (LLM mode asks the model to answer these)."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    return a.sample_input(sample_rng(seed, a.name, index, source=source))


def generate_template_sample(agent: Agent | str, seed: int, index: int) -> Sample:
    a = get_agent(agent) if isinstance(agent, str) else agent
    rng = sample_rng(seed, a.name, index)
    inp = a.sample_input(rng)
    out = a.template_output(inp, rng)
    return Sample(agent=a.name, index=index, input=inp, output=out, source="seed", meta={"seed": seed})


def generate_template_samples(agent: Agent | str, n: int, seed: int, *, start: int = 0) -> list[Sample]:
    """Samples ``start .. start+n-1`` of ``agent`` for random seed ``seed``."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    return [generate_template_sample(a, seed, i) for i in range(start, start + n)]


def template_batch(
    agent: str, seed: int, start: int, count: int, vocabulary: Sequence[str | os.PathLike[str]] = ()
) -> PostprocessResult:
    """Samples ``start .. start+count-1`` generated and validated with the vocabulary of the built-in files plus
    ``vocabulary`` (e.g. a hospital's formulary)."""
    with V.use_vocabulary(vocabulary):
        return validate_samples(agent, generate_template_samples(agent, count, seed, start=start))


def template_fingerprint(name: str, vocabulary: Sequence[str | os.PathLike[str]] = ()) -> str:
    """What an agent's template output depends on: ``TEMPLATE_VERSION``, the source of the agent's module, this
    module, :mod:`.base` and the clinical rules, and the bytes of every vocabulary file (built-in and ``vocabulary``).
    Part of every template-mode cache key, so an edited template or vocabulary file regenerates its batches without
    anyone remembering to bump a version."""
    agent_module = sys.modules[type(get_agent(name)).__module__]
    h = hashlib.sha256(TEMPLATE_VERSION.encode())
    for module in (agent_module, sys.modules[__name__], base, clinical, vocab_models):
        h.update(inspect.getsource(module).encode())
    h.update(V.vocabulary_for(vocabulary).fingerprint.encode())
    return f"{TEMPLATE_VERSION}-{h.hexdigest()[:16]}"


#: The former names (kept: code outside the package calls them).
generate_seed_sample = generate_template_sample
generate_seed_samples = generate_template_samples
