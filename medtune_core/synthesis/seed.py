"""Former name of :mod:`medtune_core.synthesis.templates` (template mode), kept so existing imports work."""

from medtune_core.synthesis.templates import (
    generate_seed_sample,
    generate_seed_samples,
    generate_template_sample,
    generate_template_samples,
    sample_input,
    sample_rng,
    template_fingerprint,
)

__all__ = [
    "generate_seed_sample",
    "generate_seed_samples",
    "generate_template_sample",
    "generate_template_samples",
    "sample_input",
    "sample_rng",
    "template_fingerprint",
]
