"""BLEU-1..4, METEOR and ROUGE-L, the metrics of the paper's Tables I and II, stated exactly.

- Tokens: lower-cased words and numbers (``[a-z0-9]+``, an apostrophe inside a word kept);
  punctuation is dropped. "Mid-tempo" is two tokens, "mid" and "tempo".
- BLEU-n: corpus-level BLEU (Papineni et al.; ``nltk.translate.bleu_score.corpus_bleu``) with
  uniform weights over 1..n-grams (cumulative BLEU-n, as image-captioning papers report it),
  clipped counts over all references of an item, the brevity penalty against the reference
  closest in length. Smoothing: Chen & Cherry's method 1 (epsilon 0.1 added to an n-gram order
  with no match in the whole corpus), which matters only for orders with zero matches.
- METEOR: ``nltk.translate.meteor_score.meteor_score`` (alpha 0.9, beta 3, gamma 0.5; exact,
  Porter-stem and WordNet 3.0 synonym matching), the best over an item's references, averaged over
  items. WordNet comes from Debian's packages (``scripts/setup-wordnet.sh``); nothing is downloaded.
- ROUGE-L: ``rouge_score`` (``RougeScorer(["rougeL"], use_stemmer=True)``), F1 of the longest
  common subsequence, the best over an item's references, averaged over items.

All figures are reported ×100, like the paper's. An empty hypothesis (a backend that failed)
scores 0 on every metric and counts in the averages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from metabgm_edge.errors import MetabgmError

EVAL_EXTRA: Final = "pip install 'metabgm-edge[eval]'"
WORDNET_HELP: Final = (
    "METEOR needs WordNet 3.0 for nltk: run 'sh scripts/setup-wordnet.sh .venv/nltk_data' (Debian's "
    "wordnet-base and wordnet-sense-index, copied where nltk looks; 'make test' does it), or point "
    "NLTK_DATA at a folder holding corpora/wordnet"
)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class EvalError(MetabgmError):
    """Metrics cannot be computed here (a missing package or WordNet); says what to install."""


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("’", "'"))


@dataclass(frozen=True)
class Scores:
    bleu: tuple[float, float, float, float]
    """BLEU-1..4, ×100."""
    meteor: float
    rouge_l: float

    def as_dict(self) -> dict[str, float]:
        return {
            "bleu1": self.bleu[0],
            "bleu2": self.bleu[1],
            "bleu3": self.bleu[2],
            "bleu4": self.bleu[3],
            "meteor": self.meteor,
            "rouge_l": self.rouge_l,
        }


def _nltk() -> Any:
    try:
        import nltk
        from nltk.translate import bleu_score, meteor_score
    except ImportError:
        raise EvalError(f"eval needs nltk and rouge-score: {EVAL_EXTRA}") from None
    return nltk, bleu_score, meteor_score


def require_wordnet() -> None:
    """Load WordNet now, so a missing one is one clear error before any model runs."""
    _nltk()
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        raise EvalError(WORDNET_HELP) from None
    except OSError as exc:  # a partial copy: a file nltk needs is missing
        raise EvalError(f"WordNet is incomplete ({exc}); {WORDNET_HELP}") from None


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, float, float, float]:
    """Cumulative corpus BLEU-1..4 (×100), smoothing method 1."""
    _, bleu_score, _ = _nltk()
    hyps = [tokens(h) for h in hypotheses]
    refs = [[tokens(r) for r in rs] for rs in references]
    smooth = bleu_score.SmoothingFunction().method1
    out = []
    for n in range(1, 5):
        weights = tuple([1.0 / n] * n)
        out.append(100.0 * bleu_score.corpus_bleu(refs, hyps, weights=weights, smoothing_function=smooth))
    return out[0], out[1], out[2], out[3]


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    require_wordnet()
    _, _, meteor_score = _nltk()
    total = 0.0
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp_tokens = tokens(hyp)
        ref_tokens = [tokens(r) for r in refs if tokens(r)]
        if hyp_tokens and ref_tokens:
            total += meteor_score.meteor_score(ref_tokens, hyp_tokens)
    return 100.0 * total / max(len(hypotheses), 1)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise EvalError(f"eval needs rouge-score: {EVAL_EXTRA}") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = 0.0
    for hyp, refs in zip(hypotheses, references, strict=True):
        if tokens(hyp) and refs:
            total += scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure
    return 100.0 * total / max(len(hypotheses), 1)


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every item needs at least one reference")
    return Scores(
        bleu(hypotheses, references), meteor(hypotheses, references), rouge_l(hypotheses, references)
    )
