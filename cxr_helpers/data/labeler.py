"""Labels from radiology report text: the 14 NIH findings + No Finding, CheXpert style.

Per finding the label is 1.0 (positive), 0.0 (negated), -1.0 (uncertain) or NaN (not mentioned).
Every phrase list lives in ``labeler_rules.yaml`` beside this module (users extend it with their own
YAML, see ``load_rules``); this module holds only the mechanics:

1. The text is split into sentences (``.``, ``?``, ``!``, line breaks; not inside ``1.5`` or ``vs.``),
   each sentence into clauses (``;``, ``:``, scope terminators such as "but", "however", "although",
   and a comma or "and" followed by another cue or a word like "stable": "no effusion, possible
   atelectasis").
2. Mentions: a finding's synonyms, hedged phrases (label -1), negative phrases ("normal heart size",
   label 0) and anatomy ("heart size": a mention only when a cue applies); its ``not`` phrases
   ("pericardial effusion") hide the synonyms inside them. Overlaps keep the longest phrase.
3. Cues: a pre-negation ("no", "without") covers the first mention after it and the mentions listed
   with that one ("no effusion, consolidation or pneumothorax"), not a mention after "with", a dash,
   a bracket, a repeat of the same finding ("no large effusion, small effusion ...") or a new
   statement (``scope.new_subject``: "no effusion, and the heart is enlarged"). A pre-uncertainty
   ("possible") covers every mention after it in its clause up to such a new statement. A post-cue
   ("has resolved", "cannot be excluded", "is unlikely") covers the mention right before it (at most
   ``post_reach`` words back) and the mentions listed with it ("effusion and atelectasis have
   resolved"). Templated "Pneumothorax: none" / "HEART: Enlarged": a short value after a colon
   (``scope.colon_negative`` / ``colon_positive``) labels the mention before the colon. Pseudo-cues
   ("no change in") hide the cue words inside them. A negation outranks an uncertainty over the same
   mention ("no evidence to suggest pneumonia" is 0).
4. A finding mentioned several times gets positive > uncertain > negative (CheXpert's aggregation:
   one positive mention makes it positive).
5. No Finding is 1.0 when no finding is positive or uncertain and the text is not empty, else NaN
   (CheXpert's rule). "No acute cardiopulmonary process"-style phrases are listed as No Finding
   mentions and set to 0 only the findings named in ``global_normal.negates`` (none by default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.data.labeler_rules import CUES, KINDS, RULES_FILE, Rules, RulesError, load_rules
from cxr_helpers.data.sources.nih import NIH_CLASSES

__all__ = ["FINDINGS", "NO_FINDING", "RULES_FILE", "Mention", "Rules", "RulesError", "explain_report", "join_sections",
           "label_counts", "label_report", "label_reports", "load_rules", "uncertain_as"]

NO_FINDING = "No Finding"
FINDINGS: tuple[str, ...] = (*NIH_CLASSES, NO_FINDING)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
_SENTENCE_END = re.compile(r"(?<![Vv]s\.)(?<=[.!?])(?:\s+|(?=[A-Z]))|\n+")


@dataclass(frozen=True)
class Mention:
    """One mention of a finding: its label, the sentence, the phrase that named it and the trigger
    that decided the label (the negation/uncertainty cue as written, the hedged or negative phrase
    itself, or "positive")."""

    finding: str
    label: float
    sentence: str
    phrase: str
    trigger: str


def label_report(text: str, rules: Optional[Rules] = None) -> dict[str, float]:
    """``{finding: label}`` for one report (findings + impression text), every name in ``FINDINGS``.

    Labels: 1.0 positive, 0.0 negated, -1.0 uncertain, NaN not mentioned. No Finding is 1.0 when
    nothing is positive or uncertain (NaN otherwise, and for an empty text).
    """
    return _aggregate(explain_report(text, rules), rules or load_rules(), bool(_clean(text)))


def label_reports(texts: Iterable[str], rules: Optional[Rules] = None, progress: bool = False) -> pd.DataFrame:
    """One row per text (in order, index 0..n-1), one float column per name in ``FINDINGS``
    holding 1 / 0 / -1 / NaN. Missing texts (None, NaN, "", "NA", "N/A", "null") give an all-NaN row. ``progress`` shows a
    tqdm bar (worth it from a few thousand reports)."""
    rules = rules or load_rules()
    texts = list(texts)
    cache: dict[str, list[tuple]] = {}
    rows = []
    it = texts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(texts, desc="labelling reports", unit="report")
    for text in it:
        clean = _clean(text)
        mentions = [m for s in _sentences(clean) for m in _cached(s, rules, cache)]
        rows.append(_aggregate(mentions, rules, bool(clean)))
    return pd.DataFrame(rows, columns=list(FINDINGS), dtype=float)


def explain_report(text: str, rules: Optional[Rules] = None) -> list[Mention]:
    """Every mention in the text, in reading order, with the label it got and the trigger that
    decided it (global-normal sentences appear as No Finding mentions with label 1.0)."""
    rules = rules or load_rules()
    return [m for s in _sentences(_clean(text)) for m in _sentence_mentions(s, rules)]


def join_sections(parts: Iterable) -> str:
    """Report sections (findings, impression, ...) as one text, one paragraph each; empty and
    missing ones ("", None, NaN, "NA") left out, so a report with none is "" (all labels blank)."""
    return "\n".join(t for t in (_clean(p) for p in parts) if t)


def label_counts(labels: pd.DataFrame) -> pd.DataFrame:
    """Per finding (rows, the 14 then No Finding): how many reports are ``positive``, ``negated``,
    ``uncertain`` and ``unmentioned`` in labeler output (columns as from ``label_reports``)."""
    rows = {}
    for name in FINDINGS:
        col = labels[name].astype(float)
        rows[name] = {"positive": int((col == POSITIVE).sum()), "negated": int((col == NEGATIVE).sum()),
                      "uncertain": int((col == UNCERTAIN).sum()), "unmentioned": int(col.isna().sum())}
    return pd.DataFrame.from_dict(rows, orient="index")


def uncertain_as(labels: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Training targets from labeler output: unmentioned (NaN) -> 0, negated -> 0, positive -> 1, and
    uncertain (-1) -> 1 (``positive``), 0 (``negative``) or NaN (``masked``: the loss ignores it).
    Columns and index are kept; only the 14 findings and No Finding are touched."""
    if policy not in ("positive", "negative", "masked"):
        raise ValueError(f"uncertain labels: policy must be positive, negative or masked, got {policy!r}")
    out = labels.copy()
    cols = [c for c in FINDINGS if c in out.columns]
    block = out[cols].astype(float)
    unc = block.to_numpy() == UNCERTAIN
    block = block.fillna(0.0)
    block = block.mask(unc, {"positive": 1.0, "negative": 0.0, "masked": np.nan}[policy])
    out[cols] = block
    return out


def _cached(sentence: str, rules: Rules, cache: dict) -> list[Mention]:
    hit = cache.get(sentence)
    if hit is None:
        hit = cache[sentence] = _sentence_mentions(sentence, rules)
    return hit


_MISSING_TEXT = {"", "na", "n/a", "nan", "none", "null", "-", "--"}


def _clean(text) -> str:
    """The text stripped; "" for None, NaN and missing-value markers ("NA", "N/A", "null", ...),
    which must not read as a report that mentions nothing (No Finding = 1)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = str(text).strip()
    return "" if text.lower() in _MISSING_TEXT else text


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip(" .\t")]


def _aggregate(mentions: list[Mention], rules: Rules, has_text: bool) -> dict[str, float]:
    out = {name: math.nan for name in FINDINGS}
    rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
    normal = False
    for m in mentions:
        if m.finding == NO_FINDING:
            normal = True
        elif math.isnan(out[m.finding]) or rank[m.label] > rank[out[m.finding]]:
            out[m.finding] = m.label
    if normal:
        for name in rules.global_negates:
            if math.isnan(out[name]):
                out[name] = NEGATIVE
    if has_text and not any(out[n] in (POSITIVE, UNCERTAIN) for n in NIH_CLASSES):
        out[NO_FINDING] = POSITIVE
    return out


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    kind: str
    text: str
    finding: str = ""


def _spans(pattern: Optional[re.Pattern], text: str, kind: str, finding: str = "") -> list[_Span]:
    if pattern is None:
        return []
    return [_Span(m.start(), m.end(), kind, m.group(0), finding) for m in pattern.finditer(text)]


def _longest_first(spans: list[_Span]) -> list[_Span]:
    """Non-overlapping spans, longer ones winning; spans with identical extent are all kept
    (one phrase can be a pre- and a post-cue)."""
    kept: list[_Span] = []
    for s in sorted(spans, key=lambda s: (-(s.end - s.start), s.start)):
        if all(s.end <= k.start or s.start >= k.end or (s.start, s.end) == (k.start, k.end) for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: (s.start, s.end))


def _clauses(sentence: str, rules: Rules) -> list[tuple[int, int]]:
    cuts = {0, len(sentence)}
    for m in re.finditer(r";|:|\s[-\u2013\u2014]+\s|[()]", sentence):
        if m.group(0) != ":" or _colon_value(sentence, m.end(), rules) is None:
            cuts.add(m.start())
    for pat in (rules.terminators, rules.clause_break):
        if pat is not None:
            cuts.update(m.start() for m in pat.finditer(sentence))
    if rules.subordinators is not None:
        for m in rules.subordinators.finditer(sentence):
            comma = sentence.find(",", m.end())
            cuts.update([m.start()] + ([comma] if comma >= 0 else []))
    edges = sorted(cuts)
    return list(zip(edges[:-1], edges[1:]))


def _colon_value(sentence: str, start: int, rules: Rules) -> Optional[_Span]:
    """The templated value right after a colon ("Effusion: none", "HEART: Enlarged") as a cue span of
    kind ``post_negation`` or ``colon_positive``, when the colon is followed by nothing else up to
    the next comma/semicolon/end; None otherwise."""
    end = re.search(r"[,;]|$", sentence[start:]).start() + start
    value = sentence[start:end].strip(" .\t")
    for kind, pat in (("post_negation", rules.colon_negative), ("colon_positive", rules.colon_positive)):
        if value and pat is not None and pat.fullmatch(value):
            lo = sentence.index(value, start)
            return _Span(lo, lo + len(value), kind, value)
    return None


def _finding_spans(sentence: str, rules: Rules) -> list[_Span]:
    out = []
    for name, pats in rules.findings.items():
        spans = [s for kind in KINDS for s in _spans(pats[kind], sentence, kind, name)]
        blocked = [s for s in spans if s.kind == "not"]
        spans = [s for s in spans if s.kind != "not" and not any(s.start < b.end and b.start < s.end for b in blocked)]
        out += _longest_first(spans)
    return sorted(out, key=lambda s: (s.start, s.end))


def _sentence_mentions(sentence: str, rules: Rules) -> list[Mention]:
    cues = _longest_first([s for kind in CUES for s in _spans(rules.cues[kind], sentence, kind)])
    cues = [c for c in cues if c.kind != "pseudo"]
    cues += [v for v in (_colon_value(sentence, m.end(), rules) for m in re.finditer(":", sentence)) if v is not None]
    found = _finding_spans(sentence, rules)
    out = []
    for g in _spans(rules.global_normal, sentence, "global"):
        out.append((g.start, Mention(NO_FINDING, POSITIVE, sentence, g.text, g.text)))
    for lo, hi in _clauses(sentence, rules):
        inside = [f for f in found if lo <= f.start < hi]
        clause_cues = [c for c in cues if lo <= c.start < hi]
        scopes = {id(c): _pre_scope(c, inside, sentence, rules) for c in clause_cues if c.kind.startswith("pre_")}
        for i, f in enumerate(inside):
            label, trigger = _decide(f, i, inside, clause_cues, scopes, sentence, rules)
            if label is not None:
                out.append((f.start, Mention(f.finding, label, sentence, f.text, trigger)))
    return [m for _, m in sorted(out, key=lambda x: x[0])]


def _decide(f: _Span, i: int, inside: list[_Span], cues: list[_Span], scopes: dict[int, set[int]],
            sentence: str, rules: Rules) -> tuple[Optional[float], str]:
    """The label of mention ``f`` (the i-th in its clause) and its trigger, or (None, "") for an
    anatomy mention no cue speaks about. ``scopes`` holds, per pre-cue, the indices it covers."""
    neg = unc = post_unc = positive = None
    chained_neg = False
    for c in cues:
        if c.start < f.end and f.start < c.end:  # a cue inside the mention: "heart is not enlarged"
            if c.kind.endswith("negation"):
                neg = neg or c
            elif c.kind.endswith("uncertainty"):
                unc = unc or c
        elif f.kind == "negative":
            continue
        elif c.end <= f.start and c.kind.startswith("pre_") and i in scopes[id(c)]:
            if c.kind == "pre_negation":
                neg = c
                chained_neg = min(scopes[id(c)]) != i
            else:
                unc = c
        elif c.start >= f.end and c.kind.startswith(("post_", "colon_")) and _post_reaches(f, i, inside, c, sentence, rules):
            if c.kind == "post_negation":
                neg = neg or c
            elif c.kind == "colon_positive":
                positive = positive or c
            else:
                unc = unc or c
                post_unc = post_unc or c
    if f.kind == "negative":
        return (UNCERTAIN, unc.text) if unc is not None and neg is None else (NEGATIVE, f.text)
    if neg is not None and post_unc is not None and chained_neg:  # "no large effusion, small effusion cannot be excluded"
        return UNCERTAIN, post_unc.text
    if neg is not None:
        return NEGATIVE, neg.text
    if unc is not None:
        return UNCERTAIN, unc.text
    if f.kind == "anatomy":
        return (POSITIVE, positive.text) if positive is not None else (None, "")
    if f.kind == "uncertain":
        return UNCERTAIN, f.text
    return POSITIVE, "positive"


def _pre_scope(cue: _Span, inside: list[_Span], sentence: str, rules: Rules) -> set[int]:
    """Indices of the clause's mentions a pre-cue covers. A negation: the first mention after it and
    those chained to it by list joins ("no effusion, consolidation or pneumothorax"); an
    uncertainty: every mention after it. Both stop at a new statement (``scope.new_subject`` after a
    comma, "and" or "with": "no effusion, and the heart is enlarged")."""
    after = [j for j, g in enumerate(inside) if g.start >= cue.end]
    if not after:
        return set()
    reached = {after[0]}
    prev = inside[after[0]]
    for j in after[1:]:
        g = inside[j]
        if g.start < prev.end:
            reached.add(j)
            continue
        between = sentence[prev.end:g.start]
        if rules.new_subject is not None and rules.new_subject.match(sentence, prev.end):
            break
        if cue.kind == "pre_negation" and not _negation_chains(prev, g, between):
            break
        reached.add(j)
        prev = g
    return reached


def _negation_chains(prev: _Span, nxt: _Span, between: str) -> bool:
    """Whether a pre-negation over ``prev`` also covers the next mention ``nxt``: they are listed
    together ("effusion, adenopathy or pneumothorax"; missing commas and typos: "effusion of
    pneumothorax", "consolidation large effusion"), and ``nxt`` is not the same finding after a
    comma ("no large effusion, small effusion cannot be excluded")."""
    words = re.findall(r"[a-z/'\-]+", between.lower())
    if nxt.finding == prev.finding and "," in between and not {"and", "or", "nor"} & set(words):
        return False
    if set(words) & _CHAIN_STOPS:
        return False
    if _LIST_JOIN.match(between) or _NEG_JOIN.match(between):
        return True
    return len(words) <= 2 and re.fullmatch(r"[\sa-z/'\-]*", between.lower()) is not None and not set(words) & _SHORT_GAP_STOPS


_CHAIN_STOPS = {"with", "following", "after", "from", "since", "post", "s/p", "but", "without", "is", "are", "was", "were"}
_SHORT_GAP_STOPS = {"has", "have", "there", "the", "a", "an", "in", "on", "at", "to"}
_JOIN_WORD = r"(?:,\s*(?:(?:and|or|and/or|nor)\b\s*)?|/\s*|\b(?:and|or|and/or|nor)\b\s*)"
_LIST_JOIN = re.compile(rf"^\s*(?:[a-z][a-z'\-]*\b\s*){{0,2}}(?:{_JOIN_WORD}(?:[a-z][a-z'\-]*\b\s*){{0,3}})+$|^\s*$", re.I)
_NEG_JOIN = re.compile(r"^[^.;:]*?(?:\b(?:to\s+)?(?:suggest|suggesting|indicate|indicating)|suggestive\s+of|indicative\s+of)\s+(?:[a-z]+\s+){0,2}$", re.I)


def _post_reaches(f: _Span, i: int, inside: list[_Span], cue: _Span, sentence: str, rules: Rules) -> bool:
    """A post-cue covers the last mention before it (within ``post_reach`` words, no blocker word
    between) and the mentions joined to that one by commas, "and", "or"."""
    before = [j for j, g in enumerate(inside) if g.end <= cue.start]
    if not before:
        return False
    last = inside[before[-1]]
    gap = sentence[last.end:cue.start]
    if len(gap.split()) > rules.post_reach or (rules.post_blockers is not None and rules.post_blockers.search(gap)):
        return False
    if f.start >= last.start:
        return f.end <= cue.start
    chain = [g for g in inside if g.end <= last.start and g.start >= f.start]
    chain.append(last)
    for a, b in zip(chain[:-1], chain[1:]):
        between = sentence[a.end:b.start]
        if b.start < a.end:
            continue
        if not _LIST_JOIN.match(between):
            return False
    return True
