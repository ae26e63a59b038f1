"""The agents, one module each; importing this package registers them all (the original five first)."""

from __future__ import annotations

import importlib
import pkgutil

from medtune_core.synthesis.base import AGENTS

#: The original scripts' agents, registered first so ``agent_names()`` lists them in their order.
BUILTIN = ("preprocess", "critic", "check_rag", "diagnosis", "drug")

for _name in BUILTIN:
    importlib.import_module(f"{__name__}.{_name}")
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in BUILTIN and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def _order_registry() -> None:
    """The original five first, in their order, then any added agent in module-name order."""
    ordered = {n: AGENTS[n] for n in BUILTIN if n in AGENTS}
    ordered.update({n: a for n, a in AGENTS.items() if n not in ordered})
    AGENTS.clear()
    AGENTS.update(ordered)


_order_registry()
