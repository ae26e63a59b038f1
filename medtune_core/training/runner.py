"""What every stage does around its TRL trainer: device and precision, model and tokenizer, adapter,
template, resume, metrics, saving.

A stage's own module only says how to build its trainer from a :class:`StageContext`
(see :mod:`medtune_core.training.stages`); :func:`run_stage` does the rest:

1. resolve the device: CUDA when present (unless ``device: cpu``); on CPU float32, no bf16, no gradient
   checkpointing, ``use_cpu``; QLoRA without CUDA is an error;
2. load the tokenizer (a missing pad token, or one equal to EOS, becomes ``<|endoftext|>`` when the vocabulary
   has it) and install the training chat template (generation markers; see :mod:`.templates`);
3. load the model (causal LM, or a one-output sequence classifier for ``rm``), with a new LoRA/DoRA/QLoRA
   adapter, the previous stage's adapter to keep training (``chain: stack``), or all weights trainable;
4. build the trainer, count non-padding tokens per step, resume from the last checkpoint in
   ``output_dir/checkpoints`` when there is one (optimizer, scheduler, RNG and step included; the stage's identity,
   :mod:`.identity`, has moved aside any checkpoint written for other inputs before this runs);
5. save the adapter (``output_dir/adapter``) or the full model (``output_dir/model``) with tokenizer and
   template (through a staging folder, renamed when complete), ``metrics.json`` (with the device trained on),
   ``loss_curve.png`` and TensorBoard logs (``output_dir/tensorboard``).

With ``extend_vocab`` (PT, SFT) the base model first gets the domain words as tokens (``output_dir/extended_base``,
see :mod:`.tokenizer_ext`) and ``train_embeddings`` adds their rows to the adapter. With ``launcher: accelerate |
torchrun`` these steps run in every launched process (:mod:`.launch`); only the main process writes outputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.training.config import AdapterType, Launcher, StageConfig, deepspeed_config_path
from medtune_core.training.metrics import count_tokens_hook, plot_loss_curve, summarise, write_metrics
from medtune_core.training.templates import prepare_training_template, save_template, training_template_for

log = logging.getLogger(__name__)

TINY_REF = "tiny"


@dataclass
class StageResult:
    """Where a stage put its outputs; ``model_dir`` is a loadable full model when there is one."""

    stage: str
    output_dir: Path
    base_model: Path
    adapter_dir: Path | None
    model_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    loss_curve: Path | None = None
    is_reward_model: bool = False
    #: dtype the merged model is saved in (the training dtype unless the stage's ``merge_dtype`` says otherwise)
    merge_dtype: str = "float32"
    #: the stage's identity (:mod:`.identity`) and the content hash of its adapter / model folder
    identity: str | None = None
    output_sha256: str | None = None
    device: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        paths = {"output_dir", "base_model", "adapter_dir", "model_dir", "loss_curve"}
        known = {f.name for f in fields(cls)}
        return cls(**{k: (Path(v) if k in paths and v is not None else v) for k, v in data.items() if k in known})


@dataclass
class Runtime:
    cuda: bool
    bf16: bool
    gradient_checkpointing: bool

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    def describe(self) -> str:
        """``cuda:0 (NVIDIA H100, bf16)`` or ``cpu (float32)``: what the stage trains on, for logs and metrics."""
        precision = "bf16" if self.bf16 else "float32"
        if not self.cuda:
            return f"cpu ({precision})"
        import torch

        index = int(os.environ.get("LOCAL_RANK", 0))
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, {precision})"


@dataclass
class StageContext:
    """Everything a stage's trainer builder needs."""

    config: StageConfig
    model_path: Path
    tokenizer: Any
    model: Any
    peft_config: Any
    runtime: Runtime
    train_dataset: Any
    eval_dataset: Any
    args_kwargs: dict[str, Any]
    template: str | None
    stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_model_ref(ref: str | os.PathLike[str]) -> Path:
    """``tiny`` (the tiny test model) or anything :func:`medtune_core.models.registry.resolve_model` takes."""
    if str(ref) in (TINY_REF, "embedded:tiny"):
        from medtune_core.models.tiny import tiny_model_path

        return tiny_model_path()
    from medtune_core.models.registry import resolve_model

    return resolve_model(ref)


def resolve_runtime(config: StageConfig) -> Runtime:
    import torch

    has_cuda = torch.cuda.is_available()
    if config.device == "cuda" and not has_cuda:
        raise MedtuneError("device: cuda was asked for, but no CUDA GPU is visible")
    cuda = has_cuda and config.device != "cpu"
    if config.adapter.type is AdapterType.QLORA:
        from medtune_core.training.config import qlora_unavailable

        problem = qlora_unavailable() if cuda else "adapter qlora needs a CUDA GPU (bitsandbytes 4/8-bit); use lora"
        if problem:
            raise MedtuneError(problem)
    if not cuda:
        if config.bf16:
            log.warning("bf16 requested on CPU: training in float32 instead (bf16 is ~16x slower on CPU here)")
        if config.gradient_checkpointing:
            log.warning("gradient checkpointing requested on CPU: off (it only costs time on CPU)")
        return Runtime(cuda=False, bf16=False, gradient_checkpointing=False)
    bf16 = torch.cuda.is_bf16_supported() if config.bf16 is None else config.bf16
    gc = True if config.gradient_checkpointing is None else config.gradient_checkpointing
    return Runtime(cuda=True, bf16=bf16, gradient_checkpointing=gc)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer with a pad token that is not EOS when the vocabulary allows (None-pad crashes collators)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    vocab = tok.get_vocab()
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        for candidate in ("<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>", "[PAD]"):
            if candidate in vocab and candidate != tok.eos_token:
                tok.pad_token = candidate
                break
        else:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
    return tok


def _module_name(model: Any, module: Any) -> str:
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def embedding_adapter_kwargs(config: StageConfig, model: Any, new_token_ids: Sequence[int]) -> dict[str, Any]:
    """LoRA settings that also train the embeddings and LM head (``train_embeddings``, PT/SFT)."""
    mode = getattr(config, "embedding_mode", lambda: None)()
    if mode is None or model is None:
        return {}
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.weight.data_ptr()
    embed_name = _module_name(model, embed)
    if mode == "new_tokens":
        ids = list(new_token_ids)
        if tied:  # PEFT wraps the tied LM head with the embedding's trainable rows by itself
            return {"trainable_token_indices": {embed_name: ids}}
        return {"trainable_token_indices": {embed_name: ids, _module_name(model, head): ids}}
    if tied:  # PEFT trains one copy and keeps the LM head tied to it
        return {"modules_to_save": [embed_name], "ensure_weight_tying": True}
    return {"modules_to_save": [embed_name] + ([_module_name(model, head)] if head is not None else [])}


def _expose_trainable_token_bias(model: Any) -> None:
    """TRL's fused LM head (SFT) reads ``lm_head.weight`` and ``lm_head.bias``; PEFT's trainable-token wrapper
    answers ``weight`` (base rows plus the trained new rows) but not ``bias``: give it its module's (None)."""
    try:
        from peft.utils.other import TrainableTokensWrapper
    except ImportError:  # pragma: no cover - older PEFT without trainable tokens
        return
    for module in model.modules():
        if isinstance(module, TrainableTokensWrapper) and "bias" not in module.__dict__:
            bias = getattr(module.original_module, "bias", None)
            if bias is not None:
                raise MedtuneError("train_embeddings new_tokens: an LM head with a bias is not supported; use full")
            module.bias = None


def peft_config_for(
    config: StageConfig, *, task_type: str = "CAUSAL_LM", model: Any = None, new_token_ids: Sequence[int] = ()
) -> Any:
    if config.adapter.type is AdapterType.FULL:
        return None
    from peft import LoraConfig

    a = config.adapter
    kwargs: dict[str, Any] = {"modules_to_save": ["score"] if task_type == "SEQ_CLS" else None}
    kwargs.update(embedding_adapter_kwargs(config, model, new_token_ids))
    return LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=a.target_modules,
        use_dora=a.type is AdapterType.DORA,
        task_type=task_type,
        **kwargs,
    )


def load_model(
    path: Path, config: StageConfig, runtime: Runtime, tokenizer: Any, *, sequence_classification: bool = False
) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if config.adapter.type is AdapterType.QLORA:
        from transformers import BitsAndBytesConfig

        bits4 = config.adapter.bits == 4
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=bits4,
            load_in_8bit=not bits4,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if runtime.bf16 else torch.float16,
        )
        kwargs["dtype"] = torch.bfloat16 if runtime.bf16 else torch.float16
        if config.launcher is not Launcher.INPROCESS:  # each process quantises onto its own GPU
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif runtime.cuda and runtime.bf16 and config.adapter.type is not AdapterType.FULL:
        kwargs["dtype"] = torch.bfloat16  # frozen base in bf16; adapters train in mixed precision
    else:
        kwargs["dtype"] = torch.float32
    if sequence_classification:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, pad_token_id=tokenizer.pad_token_id, **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if runtime.cuda and not kwargs.get("quantization_config") and not config.deepspeed:
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")  # one GPU per process under a launcher
    return model


def training_args_kwargs(config: StageConfig, runtime: Runtime, checkpoints: Path, has_eval: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "output_dir": str(checkpoints),
        "max_steps": config.max_steps,
        "num_train_epochs": config.epochs,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "warmup_steps": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "lr_scheduler_type": config.lr_scheduler_type,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "bf16": runtime.bf16,
        "fp16": False,
        "gradient_checkpointing": runtime.gradient_checkpointing,
        "use_cpu": not runtime.cuda,
        "report_to": [],  # TensorBoard is added as a callback with a fixed folder
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "eval_strategy": "steps" if has_eval and config.eval_steps else ("epoch" if has_eval else "no"),
    }
    if has_eval and config.eval_steps:
        kw["eval_steps"] = config.eval_steps
    if config.deepspeed:
        kw["deepspeed"] = str(deepspeed_config_path(config.deepspeed))
    if config.launcher is not Launcher.INPROCESS:
        kw["ddp_find_unused_parameters"] = False  # frozen base weights are not "unused"; the search costs time
    return kw


def last_checkpoint(checkpoints: Path) -> str | None:
    if not checkpoints.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoints))


def _tensorboard_callback(folder: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    folder.mkdir(parents=True, exist_ok=True)
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(folder)))


def _install_template(tokenizer: Any, config: StageConfig, *, need_markers: bool) -> str | None:
    if need_markers:
        return prepare_training_template(tokenizer, config.chat_template)
    if config.chat_template is not None:
        return prepare_training_template(tokenizer, config.chat_template)
    if not tokenizer.chat_template:
        return None
    try:
        template = training_template_for(tokenizer)
    except MedtuneError:
        template = tokenizer.chat_template
    tokenizer.chat_template = template
    return template


BuildTrainer = Callable[[StageContext], Any]


def setup_stage(
    config: StageConfig,
    build_trainer: BuildTrainer,
    *,
    prepare_data: Callable[[StageConfig, Any], tuple[Any, Any, dict[str, Any]]],
    adapter: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    sequence_classification: bool = False,
    need_markers: bool = False,
    extra: dict[str, Any] | None = None,
) -> tuple[Any, StageContext]:
    """Steps 1-4 of the module docstring without training: the ready trainer and its context."""
    from transformers import set_seed

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    (out / "stage_config.json").write_text(
        json.dumps({"stage": config.stage, **config.model_dump(mode="json")}, indent=2, ensure_ascii=False) + "\n"
    )
    runtime = resolve_runtime(config)
    log.info("%s: training on %s", config.stage, runtime.describe())
    model_path = resolve_model_ref(config.model)
    new_token_ids: list[int] = []
    if getattr(config, "extend_vocab", None) is not None:
        if adapter is not None:
            raise MedtuneError(f"{config.stage}: extend_vocab cannot keep training a previous adapter (chain: merge)")
        from medtune_core.training.tokenizer_ext import extend_for_stage

        ext = extend_for_stage(config, model_path, out / "extended_base")
        model_path, new_token_ids = ext.output_dir, ext.token_ids
    tokenizer = load_tokenizer(model_path)
    template = _install_template(tokenizer, config, need_markers=need_markers)
    train_ds, eval_ds, stats = prepare_data(config, tokenizer)
    set_seed(config.seed)
    model = load_model(model_path, config, runtime, tokenizer, sequence_classification=sequence_classification)
    peft_config = None
    if adapter is not None:
        from peft import PeftModel

        log.info("%s: continuing to train the previous stage's adapter %s", config.stage, adapter)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        peft_config = peft_config_for(
            config,
            task_type="SEQ_CLS" if sequence_classification else "CAUSAL_LM",
            model=model,
            new_token_ids=new_token_ids,
        )
    ctx = StageContext(
        config=config,
        model_path=model_path,
        tokenizer=tokenizer,
        model=model,
        peft_config=peft_config,
        runtime=runtime,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        args_kwargs=training_args_kwargs(config, runtime, checkpoints, eval_ds is not None),
        template=template,
        stats=stats,
        extra=dict(extra or {}),
    )
    trainer = build_trainer(ctx)
    _expose_trainable_token_bias(trainer.model)
    if "tensorboard" in config.report_to and trainer.is_world_process_zero():
        trainer.add_callback(_tensorboard_callback(out / "tensorboard"))
    for cb in callbacks:
        trainer.add_callback(cb)
    ctx.extra["meter"] = count_tokens_hook(trainer)
    ctx.extra["sequence_classification"] = sequence_classification
    return trainer, ctx


def train_and_save(trainer: Any, ctx: StageContext) -> StageResult:
    """Step 4-5: train (resuming when a checkpoint exists), evaluate, save outputs and metrics."""
    config = ctx.config
    out = Path(config.output_dir)
    resume_from = last_checkpoint(out / "checkpoints") if config.resume else None
    if resume_from:
        log.info("%s: resuming from %s", config.stage, resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    if ctx.eval_dataset is not None:
        trainer.log(trainer.evaluate())

    result = _save(trainer, ctx, out, ctx.extra.get("sequence_classification", False))
    if not trainer.is_world_process_zero():
        return result  # under a launcher the main process writes metrics and results
    metrics = summarise(trainer.state.log_history, ctx.extra.get("meter"))
    metrics.update(stage=config.stage, resumed_from=resume_from, data=ctx.stats, device=ctx.runtime.describe())
    for hook in ctx.extra.get("report_hooks", []):
        metrics.update(hook(trainer))
    write_metrics(out / "metrics.json", metrics)
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1, default=str) + "\n")
    result.metrics = metrics
    result.loss_curve = plot_loss_curve(trainer.state.log_history, out / "loss_curve.png", f"{config.stage} loss")
    write_result(result)
    return result


def write_result(result: StageResult) -> Path:
    """``<output_dir>/result.json`` (written to a temporary name and renamed)."""
    path = Path(result.output_dir) / "result.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def run_stage(config: StageConfig, build_trainer: BuildTrainer, **kwargs: Any) -> StageResult:
    """Run one stage end to end (see the module docstring); ``kwargs`` as for :func:`setup_stage`."""
    trainer, ctx = setup_stage(config, build_trainer, **kwargs)
    return train_and_save(trainer, ctx)


def _save(trainer: Any, ctx: StageContext, out: Path, sequence_classification: bool) -> StageResult:
    from peft import PeftModel

    model = trainer.model
    while hasattr(model, "module"):
        model = model.module
    is_peft = isinstance(model, PeftModel)
    target = out / ("adapter" if is_peft else "model")
    result = StageResult(
        stage=ctx.config.stage,
        output_dir=out,
        base_model=ctx.model_path,
        adapter_dir=target if is_peft else None,
        model_dir=None if is_peft else target,
        is_reward_model=sequence_classification,
        merge_dtype=merge_dtype_for(ctx.config, ctx.runtime),
        device=ctx.runtime.describe(),
    )
    # Written to a staging folder and renamed: a crash mid-save never leaves a half adapter under the real name.
    staging = out / f".{target.name}.partial"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    if trainer.args.world_size > 1 or trainer.is_deepspeed_enabled:
        trainer.save_model(str(staging))  # every process: gathers ZeRO-3 shards; the main process writes
        if not trainer.is_world_process_zero():
            return result
    else:
        model.save_pretrained(staging)
    ctx.tokenizer.save_pretrained(staging)
    if ctx.template:
        save_template(staging, ctx.template)
    (staging / "medtune_base.json").write_text(
        json.dumps({"base_model": str(ctx.model_path), "stage": ctx.config.stage}, indent=2) + "\n"
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return result


def merge_dtype_for(config: StageConfig, runtime: Runtime) -> str:
    """The dtype a stage's merged model is saved in: the training dtype unless ``merge_dtype`` names one."""
    if config.merge_dtype != "auto":
        return config.merge_dtype
    return "bfloat16" if runtime.bf16 else "float32"
