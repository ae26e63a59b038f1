"""Prefect tasks: thin wrappers over ``medtune_core`` that add caching, retries, tags and artifacts."""
