"""The report labeler's rules: ``labeler_rules.yaml`` (shipped beside this module), a user's YAML
merged into it, and both compiled into regexes (``Rules``) that ``cxr_helpers.data.labeler`` applies.

Phrase syntax and the file's shape are described at the top of ``labeler_rules.yaml``. A user file
adds to the shipped lists, ``remove:`` takes phrases out, ``replace: true`` ignores the shipped file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import yaml

from cxr_helpers.data.sources.nih import NIH_CLASSES

RULES_FILE = Path(__file__).with_name("labeler_rules.yaml")
KINDS = ("synonyms", "uncertain", "negative", "anatomy", "not")
CUES = ("pre_negation", "post_negation", "pre_uncertainty", "post_uncertainty", "pseudo")
_SEP = r"[\s\-]+"
_GAP = r"(?:[\s\-]+[a-z0-9']+){0,3}[\s\-]+"


class RulesError(ValueError):
    """A rules YAML that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Rules:
    """Compiled phrase lists: ``findings[name][kind]`` and ``cues[kind]`` are regexes (None for an
    empty list); ``source`` names the YAML files they came from (``rules_digest`` hashes them)."""

    findings: dict[str, dict[str, Optional[re.Pattern]]]
    cues: dict[str, Optional[re.Pattern]]
    global_normal: Optional[re.Pattern]
    global_negates: tuple[str, ...]
    terminators: Optional[re.Pattern]
    subordinators: Optional[re.Pattern]
    clause_break: Optional[re.Pattern]
    post_reach: int
    post_blockers: Optional[re.Pattern]
    new_subject: Optional[re.Pattern] = None
    colon_negative: Optional[re.Pattern] = None
    colon_positive: Optional[re.Pattern] = None
    source: tuple[str, ...] = field(default=())


def load_rules(path: str | Path | None = None) -> Rules:
    """The shipped rules (``labeler_rules.yaml``), extended by the user YAML at ``path`` if given.

    The user file has the shipped file's shape. Every list it gives is added to the shipped list of
    the same key (``findings: {Nodule: {synonyms: [spiculated density]}}`` adds one synonym);
    ``remove:`` with the same shape takes phrases out; ``replace: true`` ignores the shipped file.
    Finding names must be the 14 NIH spellings (``NIH_CLASSES``). Raises ``RulesError`` (one line naming
    the file and key) for a missing file, bad YAML or an unknown key.
    """
    if path is None:
        return _default_rules()
    path = Path(path)
    if not path.is_file():
        raise RulesError(f"labeler rules: {path} does not exist (give a YAML file shaped like {RULES_FILE.name})")
    user = _read_yaml(path)
    base = {} if user.get("replace") else _read_yaml(RULES_FILE)
    merged = _merge(base, {k: v for k, v in user.items() if k not in ("replace", "remove")}, path)
    if user.get("remove"):
        merged = _remove(merged, user["remove"], path)
    return _compile(merged, (str(RULES_FILE),) * (not user.get("replace")) + (str(path),))


@lru_cache(maxsize=1)
def _default_rules() -> Rules:
    return _compile(_read_yaml(RULES_FILE), (str(RULES_FILE),))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RulesError(f"labeler rules: {path} is not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RulesError(f"labeler rules: {path} must hold a mapping (findings:, cues:, scope:, global_normal:)")
    return data


_SHAPE = {
    "findings": {name: set(KINDS) for name in NIH_CLASSES},
    "cues": set(CUES),
    "global_normal": {"phrases", "negates"},
    "scope": {"terminators", "subordinators", "after_comma", "post_reach", "post_blockers", "new_subject",
              "colon_negative", "colon_positive"},
}


def _check_keys(data: dict, path: Path, where: str = "") -> None:
    for top, value in data.items():
        if top not in _SHAPE:
            raise RulesError(f"labeler rules: {path}: unknown key '{where}{top}' (known: {', '.join(_SHAPE)}, replace, remove)")
        if not isinstance(value, dict):
            raise RulesError(f"labeler rules: {path}: '{where}{top}' must be a mapping")
        shape = _SHAPE[top]
        for key, sub in value.items():
            if key not in shape:
                known = ", ".join(shape)
                raise RulesError(f"labeler rules: {path}: unknown key '{where}{top}.{key}' (known: {known})")
            if top == "findings":
                if not isinstance(sub, dict):
                    raise RulesError(f"labeler rules: {path}: '{where}findings.{key}' must be a mapping of {', '.join(KINDS)}")
                bad = set(sub) - shape[key]
                if bad:
                    raise RulesError(f"labeler rules: {path}: unknown key '{where}findings.{key}.{sorted(bad)[0]}' "
                                     f"(known: {', '.join(KINDS)})")


def _merge(base: dict, user: dict, path: Path) -> dict:
    _check_keys(user, path)
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for top, value in user.items():
        tgt = out.setdefault(top, {})
        for key, sub in value.items():
            if top == "findings":
                f = tgt.setdefault(key, {})
                f = tgt[key] = dict(f)
                for kind, phrases in sub.items():
                    f[kind] = _union(f.get(kind), phrases, path, f"findings.{key}.{kind}")
            elif key == "post_reach":
                tgt[key] = sub
            else:
                tgt[key] = _union(tgt.get(key), sub, path, f"{top}.{key}")
    return out


def _remove(data: dict, remove: dict, path: Path) -> dict:
    if not isinstance(remove, dict):
        raise RulesError(f"labeler rules: {path}: 'remove' must be a mapping shaped like the rules")
    _check_keys(remove, path, "remove.")

    def minus(have, drop, key):
        drop = {str(p).lower() for p in _as_list(drop, path, f"remove.{key}")}
        return [p for p in (have or []) if str(p).lower() not in drop]

    for top, value in remove.items():
        for key, sub in value.items():
            if top == "findings":
                f = data["findings"][key] = dict(data["findings"].get(key, {}))
                for kind, phrases in sub.items():
                    f[kind] = minus(f.get(kind), phrases, f"findings.{key}.{kind}")
            else:
                data[top][key] = minus(data[top].get(key), sub, f"{top}.{key}")
    return data


def _as_list(value, path: Path, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise RulesError(f"labeler rules: {path}: '{key}' must be a list of phrases, got {value!r}")
    _no_booleans(value, f"{path}: {key}")
    return [str(v) for v in value]


def _no_booleans(phrases, where: str) -> None:
    if any(isinstance(p, bool) for p in phrases):
        raise RulesError(f"labeler rules: {where} holds a bare no/yes/on/off, which YAML reads as true/false: "
                         'put such phrases in quotes ("no")')


def _union(have, add, path: Path, key: str) -> list[str]:
    out = list(have or [])
    seen = {p.lower() for p in out}
    for p in _as_list(add, path, key):
        if p.lower() not in seen:
            out.append(p)
            seen.add(p.lower())
    return out


def _compile(data: dict, source: tuple[str, ...]) -> Rules:
    where = source[-1]
    findings = {}
    for name in NIH_CLASSES:
        spec = (data.get("findings") or {}).get(name) or {}
        findings[name] = {kind: _pattern(spec.get(kind), plural=True, where=f"{where}: findings.{name}.{kind}")
                          for kind in KINDS}
    cues = {kind: _pattern((data.get("cues") or {}).get(kind), plural=False, where=f"{where}: cues.{kind}") for kind in CUES}
    normal = data.get("global_normal") or {}
    negates = tuple(str(n) for n in (normal.get("negates") or []))
    unknown = [n for n in negates if n not in NIH_CLASSES]
    if unknown:
        raise RulesError(f"labeler rules: {where}: global_normal.negates names {unknown[0]!r}, not one of {', '.join(NIH_CLASSES)}")
    scope = data.get("scope") or {}
    pre_cues = [p for k in ("pre_negation", "pre_uncertainty") for p in ((data.get("cues") or {}).get(k) or [])]
    starters = _alternation(pre_cues + list(scope.get("after_comma") or []), plural=False, where=f"{where}: scope.after_comma")
    clause_break = re.compile(rf"(?:,\s*(?:and\s+)?|(?<![a-z0-9])and\s+)(?=(?:{starters})(?![a-z0-9]))", re.I) if starters else None
    try:
        reach = int(scope.get("post_reach", 5))
    except (TypeError, ValueError):
        raise RulesError(f"labeler rules: {where}: scope.post_reach must be a whole number of words") from None
    return Rules(
        findings=findings,
        cues=cues,
        global_normal=_pattern(normal.get("phrases"), plural=False, where=f"{where}: global_normal.phrases"),
        global_negates=negates,
        terminators=_pattern(scope.get("terminators"), plural=False, where=f"{where}: scope.terminators"),
        subordinators=_pattern(scope.get("subordinators"), plural=False, where=f"{where}: scope.subordinators"),
        clause_break=clause_break,
        post_reach=reach,
        post_blockers=_pattern(scope.get("post_blockers"), plural=False, where=f"{where}: scope.post_blockers"),
        new_subject=_anchored(scope.get("new_subject"), r"\s*(?:,\s*(?:and\s+)?|(?:and|with)\s+)", f"{where}: scope.new_subject"),
        colon_negative=_anchored(scope.get("colon_negative"), "", f"{where}: scope.colon_negative"),
        colon_positive=_anchored(scope.get("colon_positive"), "", f"{where}: scope.colon_positive"),
        source=source,
    )


def _pattern(phrases, plural: bool, where: str) -> Optional[re.Pattern]:
    body = _alternation(phrases, plural, where)
    return re.compile(rf"(?<![a-z0-9])(?:{body})(?![a-z0-9])", re.I) if body else None


def _anchored(phrases, prefix: str, where: str) -> Optional[re.Pattern]:
    """``prefix`` then one of the phrases, for ``match``/``fullmatch`` at a position (None if empty)."""
    body = _alternation(phrases, plural=False, where=where)
    return re.compile(rf"{prefix}(?:{body})(?![a-z0-9])", re.I) if body else None


def rules_digest(rules: Rules) -> str:
    """A short hash of the YAML files behind ``rules`` (their bytes): labels made with other rules
    get another cache key."""
    h = hashlib.sha256()
    for path in rules.source:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:12]


def _alternation(phrases, plural: bool, where: str) -> str:
    """One regex alternation of the phrases, longest first (so the longest wins at one position)."""
    if phrases is None:
        return ""
    if isinstance(phrases, str) or not isinstance(phrases, (list, tuple)):
        raise RulesError(f"labeler rules: {where} must be a list of phrases, got {phrases!r}")
    _no_booleans(phrases, where)
    regexes = [_phrase_regex(str(p), plural, where) for p in phrases if str(p).strip()]
    return "|".join(sorted(set(regexes), key=len, reverse=True))


_TOKEN = re.compile(r"\{[^{}]*\}|\S+")


def _phrase_regex(phrase: str, plural: bool, where: str) -> str:
    """``phrase`` in the syntax described in labeler_rules.yaml, as a regex (no boundaries)."""
    if phrase.count("{") != phrase.count("}"):
        raise RulesError(f"labeler rules: {where}: unbalanced braces in phrase {phrase!r}")
    tokens = _TOKEN.findall(phrase.strip().lower())
    words = [t for t in tokens if t != "..."]
    if not words:
        raise RulesError(f"labeler rules: {where}: phrase {phrase!r} has no words")
    out, joiner = "", ""
    last_word = max(i for i, t in enumerate(tokens) if t != "...")
    for i, tok in enumerate(tokens):
        if tok == "...":
            joiner = _GAP
            continue
        if tok.startswith("{"):
            alts = [a.strip() for a in tok[1:-1].split("|") if a.strip()]
            piece = "(?:" + "|".join(_phrase_regex(a, plural and i == last_word, where) for a in alts) + ")"
        else:
            piece = _word_regex(tok, plural and i == last_word)
        out += joiner + piece
        joiner = _SEP
    return out


def _word_regex(word: str, plural: bool) -> str:
    parts = [re.escape(p) for p in word.split("-")]
    if plural and word.isalpha():
        if word.endswith("y") and word[-2:-1] not in "aeiou":
            parts[-1] = re.escape(word[:-1]) + "(?:y|ies)"
        elif word.endswith(("s", "x", "sh", "ch")):
            parts[-1] += "(?:es)?"
        else:
            parts[-1] += "(?:s|es)?"
    return r"[\s\-]?".join(parts)
