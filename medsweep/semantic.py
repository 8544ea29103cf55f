"""Semantic similarity of an answer and its reference (`eval.semantic`): the cosine of their sentence embeddings
from WordLlama (the optional `wordllama` package, MIT licence), whose default model (`l2_supercat`, 256
dimensions: token embeddings taken from Llama 2's embedding matrix and trained for sentence similarity, mean-pooled)
ships inside the wheel, so it runs on a CPU with nothing downloaded.

wordllama looks for its packaged tokenizer config under `wordllama/tokenizer/` while the wheel has it under
`wordllama/tokenizers/`, and would then download it; its cache directory is pointed at the package itself, where
the cache layout (`tokenizers/`, `weights/`) finds both files, and downloads are switched off.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE = "wordllama"
MODEL = "l2_supercat"
DIM = 256


def available() -> bool:
    """Whether the embedder is installed (`pip install 'medsweep[semantic]'`)."""
    return importlib.util.find_spec(PACKAGE) is not None


def description() -> str:
    """The model, as a record's metric definitions name it."""
    return f"{PACKAGE} {MODEL} {DIM}-d (packaged weights), mean-pooled, cosine similarity of answer and reference"


@cache
def _model() -> Any:
    import wordllama

    return wordllama.WordLlama.load(MODEL, dim=DIM, cache_dir=Path(wordllama.__file__).parent,
                                    disable_download=True)


def similarities(predictions: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each prediction with its reference. An empty text embeds as the zero vector, which has
    no direction: as in SQuAD's F1, two empty texts count as equal (1.0) and one as unrelated (0.0)."""
    import numpy as np

    model = _model()
    a = model.embed(list(predictions), norm=False)
    b = model.embed(list(references), norm=False)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    out = []
    for x, y, nx, ny in zip(a, b, norm_a, norm_b, strict=True):
        if nx == 0 or ny == 0:
            out.append(float(nx == ny))
        else:
            out.append(float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0)))
    return out
