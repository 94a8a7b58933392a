"""A character language model on the docstrings of the installed Python standard library (offline).

A second text for the transformer workloads, disjoint from the CPython help topics of :func:`kadam.experiments.
workloads.char_corpus` (``pydoc_data`` is left out): :func:`docstring_corpus` reads every ``.py`` file of the
standard library folder (``sysconfig.get_paths()["stdlib"]``) in sorted relative-path order, skipping
``site-packages``, ``dist-packages``, ``pydoc_data``, ``__pycache__`` and every test folder (a path part named
``test``, ``tests`` or ``idle_test``), parses it with :mod:`ast` (a file that is not UTF-8 or does not parse is
skipped) and keeps the module, class and function docstrings in source order (``ast.get_docstring``,
cleaned), joined by blank lines. The text is the same on every machine with the same CPython release and no
network is touched.

:func:`build_docs_gpt_task` is the pre-LN GPT of :mod:`kadam.experiments.workloads.gpt` on that text:
the first ``corpus_chars`` characters, vocabulary their sorted character set, a 90/5/5 contiguous
train/validation/test split (later files in sorted order are held out), training windows drawn by the task's
generator and up to ``evaluation_windows`` fixed non-overlapping held-out windows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch

from kadam.experiments.workloads.gpt import char_gpt_task
from kadam.experiments.workloads.tasks import Task

__all__ = ["DOCS_GPT_WORKLOADS", "build_docs_gpt_task", "corpus_digest", "docstring_corpus", "docstring_tokens"]

_SKIPPED_PARTS = frozenset(
    {"site-packages", "dist-packages", "pydoc_data", "__pycache__", "test", "tests", "idle_test"}
)

DOCS_GPT_WORKLOADS = ("docs-gpt-wide", "docs-gpt-deep", "docs-gpt-long")
"""The names under which the comparison protocol registers :func:`build_docs_gpt_task` (their sizes are the
confirmatory study's, :mod:`kadam.experiments.comparison.confirmatory`)."""


def _docstrings(tree: ast.AST) -> Iterator[str]:
    """Docstrings of ``tree`` (a module) and of its classes and functions, in source order."""
    if isinstance(tree, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        text = ast.get_docstring(tree, clean=True)
        if text:
            yield text
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or hasattr(child, "body"):
            yield from _docstrings(child)


@functools.lru_cache(maxsize=1)
def docstring_corpus() -> str:
    """The standard library's docstrings as one text (see the module docstring)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pieces: list[str] = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        if _SKIPPED_PARTS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        pieces.extend(_docstrings(tree))
    return "\n\n".join(pieces)


def corpus_digest(count: int) -> str:
    """SHA-256 of the UTF-8 bytes of the first ``count`` characters of :func:`docstring_corpus` (what a
    preregistration records so that a run on another machine can check it reads the same text)."""
    return hashlib.sha256(docstring_corpus()[:count].encode("utf-8")).hexdigest()


def docstring_tokens(count: int) -> tuple[torch.Tensor, int]:
    """The first ``count`` characters of :func:`docstring_corpus` as token ids and the vocabulary size (the
    sorted set of characters in them). Raises ``ValueError`` when the corpus is shorter than ``count``."""
    text = docstring_corpus()
    if len(text) < count:
        raise ValueError(f"corpus_chars must be at most the corpus length {len(text)}, got {count}")
    text = text[:count]
    lookup = {character: index for index, character in enumerate(sorted(set(text)))}
    return torch.tensor([lookup[character] for character in text], dtype=torch.long), len(lookup)


def build_docs_gpt_task(
    device: str | torch.device = "cpu",
    name: str = "docs-gpt-wide",
    corpus_chars: int = 1_000_000,
    context: int = 64,
    width: int = 128,
    heads: int = 4,
    layers: int = 2,
    evaluation_windows: int = 256,
) -> Task:
    """The pre-LN character GPT on the standard library's docstrings at the given sizes, named ``name``."""
    sizes = (corpus_chars, context, width, heads, layers, evaluation_windows)
    return char_gpt_task(name, device, True, docstring_tokens, *sizes)
