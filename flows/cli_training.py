"""``medtune train``: training helpers that run without Prefect::

    medtune train extend-vocab --model embedded:smollm2-135m-instruct --words terms.txt --out models/smollm2-med
    medtune train extend-vocab -m tiny --learn-from corpus.txt --learn-from qa.jsonl --top-n 300 --out ext/
    medtune train extend-vocab -m tiny --learn-from corpus.txt --dry-run     # list what would be added

``extend-vocab`` adds domain words as whole tokens (see :mod:`medtune_core.training.tokenizer_ext`): the model
is resized, every new embedding row starts as the mean of the word's old sub-token rows, and the folder gets
``medtune_vocab.json``. The output trains like any model (``model: <out>``); a stage's ``extend_vocab`` option
does the same inside the stage. Heavy modules are imported inside the commands, so ``medtune --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import fail, user_errors

app = typer.Typer(help="Training helpers: domain vocabulary.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Training helpers: domain vocabulary."""


@app.command("extend-vocab")
def extend_vocab(
    model: Annotated[str, typer.Option("--model", "-m", help="tiny, embedded:NAME, a model folder or hub id.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the extended model.")] = None,
    words: Annotated[
        Path | None, typer.Option("--words", "-w", help="Words file: one a line, or `word FREQ [TAG]`, # comments.")
    ] = None,
    learn_from: Annotated[
        list[Path] | None, typer.Option("--learn-from", "-l", help="Corpus file to learn words from (repeatable).")
    ] = None,
    top_n: Annotated[int, typer.Option(min=1, help="Learned words to add at most.")] = 200,
    min_freq: Annotated[int, typer.Option(min=1, help="A learned word occurs at least this often.")] = 5,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the words (one a line), build nothing.")] = False,
) -> None:
    """Add domain words (from a file and/or learned from a corpus) to a model's tokenizer as whole tokens."""
    if words is None and not learn_from:
        fail("give --words FILE and/or --learn-from CORPUS", 2)
    if out is None and not dry_run:
        fail("give --out FOLDER (or --dry-run to only list the words)", 2)
    from transformers import AutoTokenizer

    from medtune_core.training.runner import resolve_model_ref
    from medtune_core.training.tokenizer_ext import domain_words, extend_vocabulary

    with user_errors(OSError):
        model_path = resolve_model_ref(model)
        tokenizer = AutoTokenizer.from_pretrained(model_path) if learn_from else None
        found = domain_words(
            words_file=words, learn_from=learn_from or (), top_n=top_n, tokenizer=tokenizer, min_freq=min_freq
        )
        if not found:
            fail("no words to add (the words file is empty, or nothing in the corpus passed the filters)")
        if dry_run:
            typer.echo("\n".join(found))
            return
        assert out is not None
        ext = extend_vocabulary(model_path, found, out)
    summary = {
        "output_dir": str(ext.output_dir),
        "base_model": str(ext.base_model),
        "added": len(ext.words),
        "skipped": len(ext.skipped),
        "words": ext.words,
    }
    typer.echo(json.dumps(summary, ensure_ascii=False))
