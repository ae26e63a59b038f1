"""A tiny random causal LM for tests and smoke runs: built in seconds on CPU, cached by content hash.

Qwen2-style (hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128) with a byte-level BPE tokenizer
trained on a small built-in Chinese + English medical text, ChatML special tokens and a chat template that
wraps assistant content in ``{% generation %}`` markers, so SFT's assistant-only loss works out of the box.
The same folder loads as ``AutoModelForSequenceClassification`` (``num_labels=1``, ``pad_token_id`` set) for
reward-model tests.

The folder is ``MEDTUNE_HOME/models/tiny-<hash of everything that defines it>``; a file lock keeps two
processes from building it at once, and it is built in a staging folder that is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medtune_core.dataio.atomic import build_folder_once
from medtune_core.models.chatml import CHATML_TRAINING_TEMPLATE
from medtune_core.settings import MedtuneSettings

TINY_VERSION = "1"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
VOCAB_SIZE = 1024

MODEL_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}

CORPUS = """\
患者男性，45岁，主诉反复头痛三天，伴有头晕和恶心。建议测量血压，排除高血压引起的头痛。
诊断：偏头痛可能性大。建议规律作息，避免熬夜，必要时口服布洛芬止痛。
如果出现剧烈头痛、呕吐、意识障碍或肢体无力，请立即到急诊就诊。
糖尿病患者应控制饮食，监测血糖，按时服用二甲双胍或注射胰岛素。
高血压的诊断标准是收缩压大于等于140毫米汞柱或舒张压大于等于90毫米汞柱。
儿童发热超过三十九度，或伴有抽搐、精神差，应及时就医。
咳嗽两周以上伴有低热、盗汗、体重下降，需要排除肺结核，建议做胸部CT和痰检。
胸痛持续超过二十分钟，伴有出汗和呼吸困难，要警惕急性心肌梗死，立即拨打急救电话。
孕妇用药需谨慎，很多抗生素在孕期禁用，请在医生指导下用药。
腹泻患者注意补充水分和电解质，口服补液盐，如果出现脱水或便血请就医。
<think>患者症状提示上呼吸道感染，需要与流感和新冠鉴别。</think>建议多休息、多饮水，对症治疗。
<think>胸痛伴出汗，首先考虑急性冠脉综合征。</think>诊断需要心电图和心肌酶检查，请立即就医。
医生您好，我最近总是失眠，晚上睡不着，白天没精神，怎么办？
您好，失眠的原因很多，建议先调整睡眠习惯，睡前避免咖啡和手机，如持续一个月以上请到睡眠门诊。
The patient is a 45-year-old man with recurrent headache for three days, with dizziness and nausea.
Diagnosis: likely migraine. Advice: regular sleep, avoid alcohol, take ibuprofen if needed.
Seek emergency care immediately for chest pain lasting more than twenty minutes with sweating.
Type 2 diabetes is managed with diet, exercise, metformin and, when needed, insulin.
Hypertension is diagnosed when systolic pressure is at least 140 mmHg or diastolic at least 90 mmHg.
A fever above 39 degrees in a child with seizures needs urgent medical attention.
<think>Cough for two weeks with night sweats suggests tuberculosis.</think> A chest CT and sputum test are advised.
Antibiotics do not treat viral infections such as the common cold or influenza.
Pregnant women should take medicine only under the guidance of a doctor.
"""


def _builtin_text() -> str:
    """The built-in corpus; text files in ``medtune_core/samples`` are added when present (never required)."""
    text = CORPUS
    samples = Path(__file__).resolve().parent.parent / "samples"
    if samples.is_dir():
        for f in sorted(samples.rglob("*.txt"))[:4]:
            try:
                text += "\n" + f.read_text(encoding="utf-8")[:20000]
            except (OSError, UnicodeDecodeError):
                continue
    return text


def tiny_fingerprint(text: str | None = None) -> str:
    """Hash of everything that defines the tiny model (config, tokenizer corpus, template, version)."""
    payload = {
        "version": TINY_VERSION,
        "config": MODEL_CONFIG,
        "vocab": VOCAB_SIZE,
        "special": SPECIAL_TOKENS,
        "template": CHATML_TRAINING_TEMPLATE,
        "text": hashlib.sha256((text if text is not None else _builtin_text()).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _build_tokenizer(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in text.splitlines() if line.strip()], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    fast.chat_template = CHATML_TRAINING_TEMPLATE
    return fast


def _build(target: Path, text: str) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = _build_tokenizer(text)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        num_labels=1,
        **MODEL_CONFIG,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def tiny_model_path(home: Path | None = None) -> Path:
    """Folder of the tiny model, building it on first use (a second or two on CPU).

    ``home`` given: ``home/models/tiny-<hash>``; otherwise under the settings' models folder
    (``MEDTUNE_MODELS_DIR`` or ``MEDTUNE_HOME/models``).
    """
    models = Path(home) / "models" if home is not None else MedtuneSettings().models_dir
    text = _builtin_text()
    target = models / f"tiny-{tiny_fingerprint(text)}"
    return build_folder_once(target, lambda staging: _build(staging, text), TINY_VERSION)
