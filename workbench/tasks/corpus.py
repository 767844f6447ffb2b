"""Continue real human-written text: the collapse task.

Default corpus: the Python reference manual's topic texts in `pydoc_data.topics`, which ship with
CPython, so the task works offline anywhere. Any .txt/JSONL/CSV/parquet file (a `text` column), a
saved `datasets` folder, or a `datasets.Dataset` works too.
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pandas as pd

from ..errors import InputDataError
from .files import read_table


def default_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _texts(source) -> list[str]:
    if source is None or source == "pydoc":
        return default_texts()
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


def corpus(n: int | None = 100, source=None, prefix_words: int = 32, reference_words: int = 64,
           split: str = "train", heldout_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Prompts = the first `prefix_words` words of real passages; reference = the next `reference_words`."""
    if split not in ("train", "heldout", "all"):
        raise InputDataError(f"corpus: unknown split {split!r}.", "Use 'train', 'heldout' or 'all'.")
    chunks = passages(_texts(source), min_words=prefix_words + 8)
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
    n = len(chunks) if n is None else n
    if n <= 0:
        raise InputDataError(f"corpus: n must be positive, got {n}.", "Pass n >= 1.")
    rows = []
    for index, chunk in enumerate(chunks[:n]):
        words = chunk.split()
        rows.append({"prompt_id": f"corpus-{split}-{hashlib.sha256(chunk.encode()).hexdigest()[:12]}",
                     "prompt": " ".join(words[:prefix_words]),
                     "reference": " ".join(words[prefix_words:prefix_words + reference_words]),
                     "task": "corpus", "chat": False, "split": split_of(chunk, heldout_fraction)})
    return pd.DataFrame(rows)
