"""Domain vocabulary: add medical words to a tokenizer as whole tokens, resize the model, initialise well.

Base tokenizers (byte-level BPE in Qwen / Llama / SmolLM) split most Chinese medical terms into several pieces,
sometimes into raw bytes (``胰岛素`` -> 4 tokens): longer sequences, and a term's meaning spread over pieces.
MedicalGPT's ``build_domain_tokenizer.py`` trains a SentencePiece model on the domain corpus and merges it into
the base vocabulary; here, instead:

* **words from a file** (one a line; ``#`` comments; a jieba / THUOCL style ``word 123 n`` line gives ``word``), or
  **learned from a corpus** in any supported format (:class:`~medtune_core.dataio.DatasetReader`): Chinese
  character n-grams (2-6) that are frequent, cohesive (high pointwise mutual information between every split of
  the word) and free on both sides (high left and right branching entropy: ``高血`` is always followed by ``压``,
  so it is not a word, ``高血压`` is), that do not start or end with a function character (的, 和, ...) and that
  the tokenizer currently splits into two or more tokens; the best ``top_n`` are kept;
* they are added as tokens (``tokenizer.add_tokens``: matched before the BPE, decoded verbatim; a word with
  Latin letters at its edges only matches as a whole word, so ``stent`` does not split ``stents``);
* the embeddings are resized and every new row is the **mean of the embeddings of the word's old sub-tokens**
  (and likewise for an untied LM head), so the model starts from what it already knew instead of noise;
* tokenizer + model are saved (atomically) with ``medtune_vocab.json`` naming the base, the words and their ids.

Training the new rows afterwards is a stage option (``train_embeddings``, see :mod:`.config`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError

log = logging.getLogger(__name__)

VOCAB_INFO = "medtune_vocab.json"

#: Runs of CJK ideographs; n-grams never cross punctuation, digits or Latin text.
CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]+")

#: Characters a term rarely starts or ends with (particles, conjunctions, prepositions, pronouns, copulas).
EDGE_STOP = frozenset(
    "的了和与及或是在为有等对把被从也就都而且并其之于以到"  # particles, conjunctions, prepositions, copulas
    "这那个些们您你我他她它吗呢吧啊很更最可应要需会能将如即"  # pronouns, modal words, question particles
)


#: A word that starts or ends with a Latin letter or digit is added as a whole-word token.
LATIN_EDGE = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class Term:
    """A candidate domain word and why it was chosen."""

    word: str
    freq: int
    pmi: float  # min over the word's split points of log p(word) / (p(left) p(right))
    left_entropy: float
    right_entropy: float
    score: float
    pieces: int = 0  # tokens the base tokenizer splits it into (0: not checked)


# ------------------------------------------------------------------------------------------- corpus text


def record_text(record: Any) -> str:
    """Every piece of text in a canonical record (document, conversation, preference pair, MCQ)."""
    from medtune_core.formats import Conversation, MultipleChoice, PreferencePair, TextDocument

    if isinstance(record, TextDocument):
        return record.text
    if isinstance(record, Conversation):
        return "\n".join(m.content for m in record.messages)
    if isinstance(record, PreferencePair):
        return "\n".join([*(m.content for m in record.prompt), record.chosen, record.rejected])
    if isinstance(record, MultipleChoice):
        return "\n".join([record.question, *record.options.values(), record.explanation or ""])
    raise MedtuneError(f"no text in a {type(record).__name__} record")


def corpus_texts(files: Iterable[str | Path]) -> Iterator[str]:
    """The text of every record of ``files`` (any format :class:`DatasetReader` detects)."""
    from medtune_core.dataio import DatasetReader

    for path in files:
        for record in DatasetReader(path):
            yield record_text(record)


#: A longer "word" is almost certainly a sentence or a broken line.
MAX_WORD_CHARS = 48


def read_words_file(path: str | Path) -> list[str]:
    """Words of a words file, in order.

    One entry a line; blank lines and ``#`` comments are skipped. A line is ``word``, a jieba / THUOCL
    dictionary line ``word FREQ [TAG]`` (``高血压 120 n`` -> ``高血压``) or ``word<TAB>anything`` (the first
    field, which may contain spaces: ``heart failure<TAB>...``). Anything else (``two words``), a word of more
    than :data:`MAX_WORD_CHARS` characters, control characters or bytes that are not UTF-8 raise a
    :class:`MedtuneError` naming ``file:line``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MedtuneError(f"words file {path}: {exc.strerror or exc}") from None
    words: list[str] = []
    for number, raw_line in enumerate(raw.splitlines(), 1):
        try:
            line = raw_line.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            raise MedtuneError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            word = line.split("\t", 1)[0].strip()
        else:
            parts = line.split()
            if len(parts) > 1 and not (parts[1].isdigit() and len(parts) <= 3):
                raise MedtuneError(
                    f"{path}:{number}: {line!r}: expected one word a line, `word FREQ [TAG]` or `word<TAB>...`"
                )
            word = parts[0]
        if not word:
            raise MedtuneError(f"{path}:{number}: {line!r}: empty word before the tab")
        if len(word) > MAX_WORD_CHARS:
            raise MedtuneError(f"{path}:{number}: {word[:20]!r}...: longer than {MAX_WORD_CHARS} characters")
        if any(not ch.isprintable() for ch in word):
            raise MedtuneError(f"{path}:{number}: {word!r}: contains control characters")
        words.append(word)
    return words


# ------------------------------------------------------------------------------------------- learning


def _entropy(counts: Counter[str], boundaries: int) -> float:
    """Branching entropy of a neighbour distribution; each text boundary counts as a distinct neighbour."""
    total = sum(counts.values()) + boundaries
    if not total:
        return 0.0
    h = -sum(c / total * math.log(c / total) for c in counts.values())
    return h + boundaries * math.log(total) / total


def learn_terms(
    texts: Iterable[str],
    *,
    top_n: int = 200,
    min_n: int = 2,
    max_n: int = 6,
    min_freq: int = 5,
    min_pmi: float = 3.0,
    min_entropy: float = 1.0,
    tokenizer: Any = None,
) -> list[Term]:
    """The ``top_n`` best new-word candidates of ``texts`` (Chinese n-grams, see the module docstring).

    With ``tokenizer``, words it already encodes as one token are left out. The score favours frequent words
    that are free on their least free side: ``freq x min(left, right entropy)``. A candidate contained in a
    better one with nearly the same frequency (``高血压`` vs ``原发性高血压`` when it only ever occurs there)
    is a fragment and dropped. Memory grows with the corpus' distinct n-grams: pass a sample of a huge corpus.
    """
    if not 1 <= min_n <= max_n:
        raise MedtuneError(f"learn_terms: need 1 <= min_n <= max_n, got {min_n}, {max_n}")
    runs = [run for text in texts for run in CJK_RUN.findall(text)]
    total_chars = sum(map(len, runs))
    if not total_chars:
        return []
    counts: Counter[str] = Counter()
    for run in runs:
        for n in range(1, max_n + 1):
            for i in range(len(run) - n + 1):
                counts[run[i : i + n]] += 1
    candidates = {
        w
        for w, c in counts.items()
        if c >= min_freq and max(min_n, 2) <= len(w) and w[0] not in EDGE_STOP and w[-1] not in EDGE_STOP
    }
    if not candidates:
        return []
    left: dict[str, Counter[str]] = defaultdict(Counter)
    right: dict[str, Counter[str]] = defaultdict(Counter)
    left_edge: Counter[str] = Counter()
    right_edge: Counter[str] = Counter()
    for run in runs:
        for n in range(min_n, max_n + 1):
            for i in range(len(run) - n + 1):
                w = run[i : i + n]
                if w not in candidates:
                    continue
                if i:
                    left[w][run[i - 1]] += 1
                else:
                    left_edge[w] += 1
                if i + n < len(run):
                    right[w][run[i + n]] += 1
                else:
                    right_edge[w] += 1

    def pmi(w: str) -> float:
        p = counts[w] / total_chars
        return min(
            math.log(p / ((counts[w[:i]] / total_chars) * (counts[w[i:]] / total_chars))) for i in range(1, len(w))
        )

    scored: list[Term] = []
    for w in candidates:
        cohesion = pmi(w)
        if cohesion < min_pmi:
            continue
        le, re_ = _entropy(left[w], left_edge[w]), _entropy(right[w], right_edge[w])
        if min(le, re_) < min_entropy:
            continue
        score = counts[w] * min(le, re_)
        scored.append(Term(w, counts[w], round(cohesion, 3), round(le, 3), round(re_, 3), round(score, 3)))
    by_word = {t.word: t for t in scored}
    fragments = {
        part
        for t in scored
        for n in range(min_n, len(t.word))
        for i in range(len(t.word) - n + 1)
        if (part := t.word[i : i + n]) in by_word and by_word[part].freq <= 1.2 * t.freq
    }
    scored.sort(key=lambda t: (-t.score, -t.freq, t.word))
    kept: list[Term] = []
    for term in scored:
        if term.word in fragments:
            continue
        if tokenizer is not None:
            pieces = len(tokenizer(term.word, add_special_tokens=False)["input_ids"])
            if pieces < 2:
                continue
            term = Term(**{**asdict(term), "pieces": pieces})
        kept.append(term)
        if len(kept) >= top_n:
            break
    return kept


# ------------------------------------------------------------------------------------------- extension


@dataclass
class VocabExtension:
    """What :func:`extend_vocabulary` did: the saved folder, the words added and each one's new id."""

    output_dir: Path
    base_model: Path
    words: list[str]
    token_ids: list[int]
    sub_tokens: dict[str, list[int]]
    skipped: dict[str, str]  # word -> why it was not added

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def load(cls, folder: str | Path) -> VocabExtension:
        """Read ``medtune_vocab.json`` of an extended model folder (wherever the folder lives now)."""
        data = json.loads((Path(folder) / VOCAB_INFO).read_text(encoding="utf-8"))
        return cls(
            output_dir=Path(folder),
            base_model=Path(data["base_model"]),
            words=data["words"],
            token_ids=data["token_ids"],
            sub_tokens=data["sub_tokens"],
            skipped=data.get("skipped", {}),
        )


def domain_words(
    *,
    words_file: str | Path | None = None,
    learn_from: Sequence[str | Path] = (),
    top_n: int = 200,
    tokenizer: Any = None,
    **learn_options: Any,
) -> list[str]:
    """Words from ``words_file`` (all of them, in order) then up to ``top_n`` learned from ``learn_from``."""
    words: list[str] = read_words_file(words_file) if words_file else []
    if learn_from:
        terms = learn_terms(corpus_texts(learn_from), top_n=top_n, tokenizer=tokenizer, **learn_options)
        log.info("learned %d domain words from %s", len(terms), ", ".join(map(str, learn_from)))
        words += [t.word for t in terms]
    return list(dict.fromkeys(w for w in words if w))


def _mean_init(weight: Any, rows: dict[int, list[int]]) -> None:
    import torch

    with torch.no_grad():
        for new_id, pieces in rows.items():
            weight[new_id] = weight[pieces].mean(dim=0)


def extend_vocabulary(model_path: str | Path, words: Sequence[str], output_dir: str | Path) -> VocabExtension:
    """Add ``words`` as tokens to the model at ``model_path``; save tokenizer + resized model to ``output_dir``.

    Words the tokenizer already encodes as one token, or that encode to nothing, are skipped (and reported).
    Each new embedding row (and LM-head row when the head is not tied) is the mean of the rows of the word's
    sub-tokens under the original tokenizer. The folder is written atomically.
    """
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune_core.training.templates import TEMPLATE_FILE, TEMPLATE_INFO

    model_path, output_dir = Path(model_path), Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    vocab = tokenizer.get_vocab()
    sub_tokens: dict[str, list[int]] = {}
    skipped: dict[str, str] = {}
    for word in dict.fromkeys(w.strip() for w in words):
        if not word:
            continue
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if word in vocab or len(ids) == 1:
            skipped[word] = "already one token"
        elif not ids:
            skipped[word] = "encodes to nothing"
        else:
            sub_tokens[word] = ids
    if not sub_tokens:
        raise MedtuneError(f"no new words to add to {model_path} ({len(skipped)} already single tokens)")
    # Latin words match only as whole words ("stent" must not split "stents"); Chinese has no word boundaries.
    added = tokenizer.add_tokens([AddedToken(w, single_word=bool(LATIN_EDGE.search(w[0] + w[-1]))) for w in sub_tokens])
    new_ids = [tokenizer.convert_tokens_to_ids(w) for w in sub_tokens]
    assert added == len(sub_tokens) and len(set(new_ids)) == len(new_ids), "tokenizer did not add every word"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    rows = dict(zip(new_ids, sub_tokens.values(), strict=True))
    embed = model.get_input_embeddings().weight
    _mean_init(embed, rows)
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != embed.data_ptr():
        _mean_init(head.weight, rows)
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    for name in (TEMPLATE_FILE, TEMPLATE_INFO):
        if (model_path / name).is_file():
            shutil.copy2(model_path / name, staging / name)
    result = VocabExtension(output_dir, model_path, list(sub_tokens), new_ids, sub_tokens, skipped)
    (staging / VOCAB_INFO).write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n")
    old = output_dir.with_name(output_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if output_dir.exists():
        os.replace(output_dir, old)
    os.replace(staging, output_dir)
    shutil.rmtree(old, ignore_errors=True)
    log.info("added %d domain tokens to %s -> %s (%d skipped)", len(new_ids), model_path, output_dir, len(skipped))
    return result


def extended_base(model_path: str | Path, words: Sequence[str], output_dir: str | Path) -> VocabExtension:
    """:func:`extend_vocabulary` once: an existing ``output_dir`` made from the same base and words is reused
    (a resumed stage, or every process of a multi-GPU launch); a file lock keeps processes from racing."""
    from filelock import FileLock

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(output_dir) + ".lock"):
        if (output_dir / VOCAB_INFO).is_file():
            done = VocabExtension.load(output_dir)
            wanted = [w for w in dict.fromkeys(w.strip() for w in words) if w and w not in done.skipped]
            if done.base_model == Path(model_path) and done.words == wanted:
                return done
        return extend_vocabulary(model_path, words, output_dir)


def extend_for_stage(config: Any, model_path: str | Path, folder: str | Path) -> VocabExtension:
    """A stage's ``extend_vocab`` applied to its base model (built once into ``folder``, then reused)."""
    ext = config.extend_vocab
    tokenizer = None
    if ext.learn_from:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
    words = domain_words(
        words_file=ext.words_file,
        learn_from=ext.learn_from,
        top_n=ext.top_n,
        tokenizer=tokenizer,
        min_freq=ext.min_freq,
    )
    if not words:
        raise MedtuneError(f"{config.stage}: extend_vocab found no words to add")
    return extended_base(model_path, words, folder)
