"""Prefect flows, one module per flow, and the ``medtune`` command line."""
