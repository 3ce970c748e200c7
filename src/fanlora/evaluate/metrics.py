"""The metrics of the paper's appendix A.2, as pure functions of text.

- ``accuracy`` (yes/no, choice, multiple choice): the option with the highest
  log-likelihood is the prediction; score 1 when it is the labelled one.
- ``f1_em`` (SQuAD): ``(F1 + EM) / 2`` with the official SQuAD v1.1 normalisation (lower
  case, no punctuation, no articles a/an/the, single spaces), each the maximum over the
  reference answers; F1 is the harmonic mean of token precision and recall.
- ``sql_em`` (SQL): exact match after normalising case, whitespace, quotes and the spacing
  around punctuation. The paper executes the queries against the database; the Spider rows
  shipped here carry no database, so execution match is out of reach and EM stands in.
- ``number_acc`` (math): the last number in the generated text equals the reference's value
  (fractions such as ``1 / 2`` are evaluated; equal within 1e-6 relative).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from fractions import Fraction

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's normalize_answer: lower, drop punctuation and articles, squash spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 = 2PR / (P + R) of the normalised answers; 0 when no token is
    shared, including when both normalise to empty (as the official v1.1 script does)."""
    pred, ref = squad_normalize(prediction).split(), squad_normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_em(prediction: str, reference: str) -> float:
    return float(squad_normalize(prediction) == squad_normalize(reference))


def f1_em(prediction: str, references: list[str]) -> dict[str, float]:
    """{'f1', 'em', 'f1_em'}: each the max over references; f1_em = (F1 + EM) / 2."""
    refs = references or [""]
    f1 = max(squad_f1(prediction, r) for r in refs)
    em = max(squad_em(prediction, r) for r in refs)
    return {"f1": f1, "em": em, "f1_em": (f1 + em) / 2}


def sql_normalize(query: str) -> str:
    """Lower case, double quotes as single, one space around punctuation, no trailing ';'."""
    query = query.strip().rstrip(";").replace('"', "'").lower()
    query = re.sub(r"\s*([(),=<>!*])\s*", r" \1 ", query)
    query = re.sub(r"([<>!])\s+=", r"\1=", query)
    return " ".join(query.split())


def sql_em(prediction: str, references: list[str]) -> dict[str, float]:
    first = prediction.strip().split("\n")[0]
    hit = any(sql_normalize(first) == sql_normalize(r) for r in references)
    return {"sql_em": float(hit)}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?|-?\.\d+")


def parse_number(text: str) -> float | None:
    """The value of the last number in ``text`` ('1 / 2' -> 0.5, '1,000' -> 1000)."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    token = found[-1].replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            top, bottom = token.split("/")
            return float(Fraction(top) / Fraction(bottom)) if float(bottom) else None
        return float(token)
    except (ValueError, ZeroDivisionError):
        return None


def number_acc(prediction: str, references: list[str]) -> dict[str, float]:
    """1 when the last number of ``prediction`` equals a reference's (relative 1e-6)."""
    got = parse_number(prediction)
    hit = got is not None and any(
        (want := parse_number(r)) is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))
        for r in references
    )
    return {"number_acc": float(hit)}


GENERATED = {"f1_em": f1_em, "sql_em": sql_em, "number_acc": number_acc}


def score_generated(metric: str, prediction: str, references: list[str]) -> dict[str, float]:
    """Per-example metric values of a generated answer; the headline one is ``metric``."""
    return GENERATED[metric](prediction, references)
