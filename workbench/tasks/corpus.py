"""Continue real human-written text: the collapse task.

Default corpus ("python"): human prose that ships with CPython, so the task works offline anywhere: the
reference manual's topic texts in `pydoc_data.topics` ("pydoc", ~320 passages) and the prose paragraphs of
the standard library's docstrings ("docstrings", ~930 passages, read from the source files with `ast`,
nothing imported; tests and GUI/demo packages left out). Together ~1,250 passages, so the content-hash
held-out split (20%) holds ~250 passages that no training prompt ever comes from. The docstrings belong to
the running Python, so another Python version gives a slightly different corpus (the run records the count).
Any .txt/JSONL/CSV/parquet file (a `text` column), a saved `datasets` folder, or a `datasets.Dataset` works too.
"""
from __future__ import annotations

import functools
import hashlib
import random
import re
from pathlib import Path

import pandas as pd

from ..errors import InputDataError
from .files import read_table


BUILT_IN_SOURCES = ("python", "pydoc", "docstrings")
# standard-library folders whose docstrings are not reference prose (tests, GUIs, demos, vendored code)
_SKIPPED_STDLIB = {"site-packages", "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip",
                   "pydoc_data", "__pycache__"}


def pydoc_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


@functools.lru_cache(maxsize=1)
def docstring_texts() -> tuple[str, ...]:
    """Every module, class and function docstring of the running Python's standard library, in file order
    (parsed with `ast`, so nothing is imported; ~4 s, once per process)."""
    import ast
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIPPED_STDLIB & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue  # a file this Python cannot parse (e.g. a bad-syntax test fixture) holds no prose we need
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node, clean=True)
                if text:
                    texts.append(text)
    return tuple(texts)


def default_texts(source: str = "python") -> list[str]:
    """The built-in human text: "pydoc", "docstrings", or "python" (both)."""
    if source == "pydoc":
        return pydoc_texts()
    if source == "docstrings":
        return list(docstring_texts())
    return pydoc_texts() + list(docstring_texts())


def _texts(source) -> list[str]:
    if source is None or (isinstance(source, str) and source in BUILT_IN_SOURCES):
        return default_texts(source or "python")
    if hasattr(source, "column_names"):  # a datasets.Dataset
        if "text" not in source.column_names:
            raise InputDataError(f"The dataset has no 'text' column (columns: {source.column_names}).",
                                 "Rename the text column to 'text'.")
        return list(source["text"])
    path = Path(source)
    if path.is_dir():
        import datasets

        return _texts(datasets.load_from_disk(str(path)))
    frame = read_table(path, what="corpus file")
    if "text" not in frame.columns:
        raise InputDataError(f"The corpus file {path} has no 'text' column (columns: {list(frame.columns)}).",
                             "Rename the column holding the text to 'text'.")
    return [str(t) for t in frame["text"]]


def passages(texts: list[str], min_words: int = 40) -> list[str]:
    """Prose paragraphs (not code or grammar blocks) of at least `min_words` words, whitespace-folded."""
    out = []
    for text in texts:
        for block in re.split(r"\n\s*\n", text):
            lines = block.splitlines()
            if not lines or any(line.startswith((" ", "\t")) for line in lines) or set(block.strip()) <= set("*=-~"):
                continue  # indented lines are code samples or grammar rules, not prose
            words = block.split()
            if len(words) >= min_words:
                out.append(" ".join(words))
    return out


def split_of(text: str, heldout_fraction: float) -> str:
    """A stable train/heldout split by content hash, so held-out text never leaks into training."""
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if bucket < heldout_fraction else "train"


def _first_per_opening(chunks: list[str], prefix_words: int) -> list[str]:
    """The first passage of each opening (its first `prefix_words` words), in order."""
    kept, seen = [], set()
    for chunk in chunks:
        opening = " ".join(chunk.split()[:prefix_words])
        if opening not in seen:
            seen.add(opening)
            kept.append(chunk)
    return kept


def corpus(n: int | None = 100, source=None, prefix_words: int = 32, reference_words: int = 64,
           split: str = "train", heldout_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Prompts = the first `prefix_words` words of real passages; reference = the next `reference_words`.
    `source`: None/"python" (built in, see the module docstring), "pydoc", "docstrings", a file, a saved
    dataset folder or a `datasets.Dataset`. Asking the held-out split for more passages than it has is an error
    (a held-out set silently smaller than asked would change what a perplexity means)."""
    if split not in ("train", "heldout", "all"):
        raise InputDataError(f"corpus: unknown split {split!r}.", "Use 'train', 'heldout' or 'all'.")
    chunks = passages(_texts(source), min_words=prefix_words + 8)
    openings = {" ".join(c.split()[:prefix_words]) for c in chunks if split_of(c, heldout_fraction) == "heldout"}
    if split != "all":
        chunks = [c for c in chunks if split_of(c, heldout_fraction) == split]
    if not chunks:
        raise InputDataError("corpus: no passage is long enough.",
                             f"Use a corpus with paragraphs of more than {prefix_words + 8} words, or lower prefix_words.")
    rng = random.Random(seed)
    rng.shuffle(chunks)
    # the reference manual repeats some paragraphs across topics; a repeat would reuse a prompt_id.
    # Dropped after the shuffle so the first occurrences keep their order (and earlier runs their prompts).
    chunks = list(dict.fromkeys(chunks))
    if split == "train":  # a passage that opens like a held-out one (a docstring repeated with another ending)
        # would train on a held-out prompt: left out, after the shuffle, so the others keep their order
        chunks = [c for c in chunks if " ".join(c.split()[:prefix_words]) not in openings]
    # two passages with the same opening would be one prompt twice: the first (after the shuffle) stays
    chunks = _first_per_opening(chunks, prefix_words)
    n = len(chunks) if n is None else n
    if n <= 0:
        raise InputDataError(f"corpus: n must be positive, got {n}.", "Pass n >= 1.")
    if split == "heldout" and n > len(chunks):
        raise InputDataError(
            f"corpus: the held-out split has {len(chunks)} passages of more than {prefix_words + 8} words "
            f"(heldout_fraction {heldout_fraction}), fewer than the {n} asked for.",
            f"Ask for at most {len(chunks)} (e.g. eval.heldout_texts: null takes them all), use a larger corpus "
            "source, or raise heldout_fraction.")
    rows = []
    for index, chunk in enumerate(chunks[:n]):
        words = chunk.split()
        rows.append({"prompt_id": f"corpus-{split}-{hashlib.sha256(chunk.encode()).hexdigest()[:12]}",
                     "prompt": " ".join(words[:prefix_words]),
                     "reference": " ".join(words[prefix_words:prefix_words + reference_words]),
                     "task": "corpus", "chat": False, "split": split_of(chunk, heldout_fraction)})
    return pd.DataFrame(rows)
