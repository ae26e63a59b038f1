"""Evaluation beyond the recall benchmarks: the reasoning-RL safety metrics (:mod:`medtune_core.evaluation.safety`)."""
