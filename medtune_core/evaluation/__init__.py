"""Evaluation beyond the recall benchmarks: seed 3's safety metrics (:mod:`medtune_core.evaluation.safety`)."""
