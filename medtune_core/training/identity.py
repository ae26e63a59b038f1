"""A stage's identity: the hash of what it is trained from, bound to what it leaves on disk.

A stage's outputs (checkpoints, adapter or model, ``merged/``) are only worth reusing for the inputs they were
trained from. :func:`stage_identity` hashes those inputs: the resolved config (minus the settings that only say
where or how often to write), the *contents* of every file it reads (training and eval data, chat template, words
files, DeepSpeed file, a reward model folder) and the contents of its base model (and of the adapter it keeps
training with ``chain: stack``). :class:`StageState` records that identity in ``<output_dir>/medtune_stage.json``:

- same identity, finished, outputs intact (their content hash as recorded) -> reused, nothing trains;
- same identity, unfinished -> training resumes from its last checkpoint;
- any other identity (edited data, a changed setting, a retrained base) or outputs altered since -> the old
  state is moved aside to ``<output_dir>/superseded/`` (the previous generation only) and the stage trains anew.

So an edited row can never "resume" from a finished checkpoint of the old data, and a stale adapter is never
served. The teacher's judgements (keyed by their own content) stay where they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medtune_core.hashing import path_sha256
from medtune_core.training.config import OnlineRLConfig, StageConfig, deepspeed_config_path

log = logging.getLogger(__name__)

STATE_FILE = "medtune_stage.json"
SUPERSEDED = "superseded"
#: Settings that say where or how often a stage writes, not what it learns.
NOT_IDENTITY = frozenset(
    {"output_dir", "resume", "report_to", "save_steps", "save_total_limit", "logging_steps", "judgements_path"}
)
#: Settings that name files or folders: they enter the identity by content only.
BY_CONTENT = frozenset({"model", "train_files", "eval_files", "reward_model"})
#: What stays in place when a stage's state is moved aside: caches keyed by their own content, the state itself.
KEEP = frozenset({SUPERSEDED, "teacher_judgements.jsonl", STATE_FILE})


def content(path: str | os.PathLike[str]) -> str:
    """Content hash of a file or folder (location-independent: moving data does not retrain)."""
    return path_sha256(Path(path))


def _file_inputs(config: StageConfig) -> dict[str, Any]:
    """Every file or folder the stage reads, by content."""
    files: dict[str, Any] = {
        "train_files": [content(p) for p in config.train_files],
        "eval_files": [content(p) for p in config.eval_files],
    }
    if config.chat_template and Path(config.chat_template).exists():
        files["chat_template"] = content(config.chat_template)
    if config.deepspeed:
        files["deepspeed"] = content(deepspeed_config_path(config.deepspeed))
    ext = getattr(config, "extend_vocab", None)
    if ext is not None:
        files["words_file"] = content(ext.words_file) if ext.words_file else None
        files["learn_from"] = [content(p) for p in ext.learn_from]
    if isinstance(config, OnlineRLConfig):
        if config.reward_model:
            files["reward_model"] = content(config.reward_model)
        files["reward_paths"] = [
            content(r.options["path"]) for r in config.rewards if isinstance(r.options.get("path"), (str, Path))
        ]
    return files


def stage_identity(config: StageConfig, model_path: str | Path, adapter: str | Path | None = None) -> str:
    """The hash of the stage's resolved config, its input files' contents and its base model's contents."""
    # files count by content (below), not by where they are: moved data or a moved base model is the same stage
    settings = config.model_dump(mode="json", exclude=set(NOT_IDENTITY | BY_CONTENT))
    settings["model"] = content(model_path)
    payload = {
        "stage": config.stage,
        "settings": settings,
        "files": _file_inputs(config),
        "adapter": content(adapter) if adapter is not None else None,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class StageState:
    """``<output_dir>/medtune_stage.json``: the identity the folder's contents belong to, and whether it finished."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / STATE_FILE

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def finished(self, identity: str) -> Any:
        """The stage's :class:`~.runner.StageResult` when it finished for ``identity`` and its outputs are intact."""
        from medtune_core.training.runner import StageResult

        state = self.read()
        result_file = self.output_dir / "result.json"
        if state.get("identity") != identity or state.get("status") != "done" or not result_file.is_file():
            return None
        try:
            result = StageResult.from_dict(json.loads(result_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None
        produced = result.adapter_dir or result.model_dir
        if produced is None or not produced.is_dir() or content(produced) != state.get("output_sha256"):
            log.warning("%s: finished outputs are missing or were altered since; training again", self.output_dir)
            return None
        return result

    def start(self, identity: str, *, force: bool = False) -> None:
        """Make the folder ready to train ``identity``: a foreign (or forced) state is moved aside first."""
        state = self.read()
        same = state.get("identity") == identity and state.get("status") == "training"
        leftovers = [p for p in self._entries() if not p.name.endswith(".lock")]
        if leftovers and (force or not same):
            why = "forced" if force else ("another identity" if state else "no identity recorded")
            self.move_aside(state.get("identity") or "unknown", why)
        self._write({"identity": identity, "status": "training", "started": time.time()})

    def finish(self, identity: str, result: Any) -> None:
        produced = result.adapter_dir or result.model_dir
        self._write(
            {
                "identity": identity,
                "status": "done",
                "finished": time.time(),
                "output_sha256": content(produced) if produced is not None else None,
            }
        )

    def _entries(self) -> Iterable[Path]:
        if not self.output_dir.is_dir():
            return []
        return [p for p in self.output_dir.iterdir() if p.name not in KEEP]

    def move_aside(self, old_identity: str, why: str) -> Path:
        """Move the folder's outputs to ``superseded/<old identity>`` (replacing the generation kept before)."""
        target = self.output_dir / SUPERSEDED
        shutil.rmtree(target, ignore_errors=True)
        dest = target / old_identity[:16]
        dest.mkdir(parents=True)
        for entry in self._entries():
            if not entry.name.endswith(".lock"):
                os.replace(entry, dest / entry.name)
        log.warning("%s: outputs of %s (%s) moved aside to %s", self.output_dir, old_identity[:12], why, dest)
        return dest
