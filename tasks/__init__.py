"""Prefect tasks: thin wrappers over ``medtune_core`` that add caching, retries, tags and artifacts.

Importing this package applies medtune's Prefect settings (result storage, heartbeats) in the current process,
so that a flow run launched by any worker honours ``MEDTUNE_RESULT_STORAGE`` (see :mod:`tasks.prefect_env`).
"""

from tasks.prefect_env import apply_in_process

apply_in_process()
