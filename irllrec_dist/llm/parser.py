"""Parse an LLM's chain-of-thought answer into ``{"profile": str, "intents": [str]}``.

Pure functions, no model needed. The model is asked to reason first and end
with one JSON object; small models wrap it in prose or code fences, break the
JSON (trailing commas, single quotes, unquoted keys, cut off by the token
limit), repeat themselves, or give intents as one comma-separated string.
:func:`parse_output` takes what is valid and says what it did:

- ``ok``: a well-formed JSON object with a non-empty profile and at least one
  intent, used as is (only surrounding prose, code fences and whitespace removed).
- ``repaired``: a usable profile and at least one intent, after at least one
  repair; ``reasons`` lists each one (e.g. ``"trailing comma"``,
  ``"duplicate intents removed"``).
- ``failed``: no profile or no intent could be read; ``reasons`` says why, and
  whatever *was* read (e.g. a profile without intents) is still returned so the
  caller's fallback can keep it.

Where several JSON objects appear (reasoning that quotes an example, a model
that repeats its answer) the *last* one carrying both keys wins.

Written here rather than with json-repair because the stage records, per
entity, *what* was repaired, which json-repair does not report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

OK, REPAIRED, FAILED = "ok", "repaired", "failed"

_PROFILE_KEYS = ("profile", "summary", "description", "user_profile", "item_profile")
_INTENT_KEYS = ("intents", "intent", "intentions", "user_intents", "item_intents")
_KEY_START = re.compile(r"""\{\s*["']?\s*(profile|summary|description|intents?|intentions)\b""", re.I)
_QUOTED_KEY = re.compile(r"""["'](profile|intents)["']\s*:""", re.I)
_LINE = re.compile(r"""^[\s>*#-]*\**\s*(profile|summary|intents?)\s*\**\s*[:=]\s*\**\s*(.+?)\s*$""", re.I | re.M)
_BULLET = re.compile(r"""^\s*(?:[-*\u2022]+|\d+[.)]|\(\d+\))\s*""")
_PLACEHOLDER = re.compile(r"^<[^<>]*>$")
_MAX_DEPTH = 32
_MAX_CANDIDATES = 50


@dataclass
class ParseResult:
    status: str  # ok | repaired | failed
    profile: str = ""
    intents: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# a lenient JSON reader: accepts what small models write, records each deviation


class _Lenient:
    def __init__(self, text: str):
        self.s = text
        self.pos = 0
        self.flags: list[str] = []
        self.unterminated = 0

    def flag(self, what: str) -> None:
        if what not in self.flags:
            self.flags.append(what)

    def eof(self) -> bool:
        return self.pos >= len(self.s)

    def ws(self) -> None:
        while self.pos < len(self.s) and self.s[self.pos] in " \t\r\n":
            self.pos += 1

    def value(self, depth: int = 0):
        if depth > _MAX_DEPTH:
            raise ValueError("nesting too deep")
        self.ws()
        if self.eof():
            self.flag("cut off")
            return None
        c = self.s[self.pos]
        if c == "{":
            return self.obj(depth)
        if c == "[":
            return self.arr(depth)
        if c in "\"'":
            return self.string(c)
        return self.bare(stop=",]}\n")

    def string(self, quote: str) -> str:
        if quote == "'":
            self.flag("single quotes")
        self.pos += 1
        buf = []
        s = self.s
        while True:
            if self.pos >= len(s):
                self.flag("unterminated string")
                self.unterminated += 1
                return "".join(buf)
            ch = s[self.pos]
            if ch == "\\" and self.pos + 1 < len(s):
                nxt = s[self.pos + 1]
                simple = {"n": "\n", "t": "\t", "r": "\r", "b": "", "f": "", "/": "/", "\\": "\\", '"': '"', "'": "'"}
                if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", s[self.pos + 2 : self.pos + 6] or ""):
                    buf.append(chr(int(s[self.pos + 2 : self.pos + 6], 16)))
                    self.pos += 6
                    continue
                buf.append(simple.get(nxt, nxt))
                self.pos += 2
                continue
            if ch == quote:
                # A quote followed by something that cannot follow a string is part of the text
                # ("a "great" cafe", 'people's choice').
                j = self.pos + 1
                while j < len(s) and s[j] in " \t\r":
                    j += 1
                if j >= len(s) or s[j] in ",:]}\n" or (s[j] == quote and j > self.pos + 1):
                    self.pos += 1
                    return "".join(buf)
                self.flag("unescaped quote in string")
            elif ch == "\n":
                self.flag("line break in string")
            buf.append(ch)
            self.pos += 1

    def bare(self, stop: str):
        start = self.pos
        while self.pos < len(self.s) and self.s[self.pos] not in stop:
            self.pos += 1
        tok = self.s[start : self.pos].strip()
        low = tok.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("null", "none"):
            return None
        try:
            return json.loads(tok)
        except ValueError:
            self.flag("unquoted text")
            return tok

    def key(self) -> str:
        c = self.s[self.pos]
        if c in "\"'":
            return str(self.string(c))
        self.flag("unquoted key")
        return str(self.bare(stop=":=,}\n"))

    def next_member(self, close: str, unclosed: str) -> bool:
        """Skip white space and extra commas to the next member of an object or list; False at
        its end (closed, or cut off)."""
        while True:
            self.ws()
            if self.eof():
                self.flag(unclosed)
                return False
            c = self.s[self.pos]
            if c == close:
                self.pos += 1
                return False
            if close == "]" and c == "}":  # '[... }' : the list was never closed
                self.flag("unclosed list")
                return False
            if c != ",":
                return True
            self.flag("extra comma")
            self.pos += 1

    def after_member(self, close: str, closers: str) -> None:
        """The comma after a member (or the end of the object or list)."""
        self.ws()
        if self.eof():
            return
        c = self.s[self.pos]
        if c == ",":
            self.pos += 1
            self.ws()
            if not self.eof() and self.s[self.pos] == close:
                self.flag("trailing comma")
        elif c not in closers:
            self.flag("missing comma")

    def obj(self, depth: int) -> dict:
        self.pos += 1
        out: dict = {}
        while self.next_member("}", "unclosed object"):
            k = self.key()
            self.ws()
            if not self.eof() and self.s[self.pos] in ":=":
                if self.s[self.pos] == "=":
                    self.flag("'=' instead of ':'")
                self.pos += 1
            else:
                self.flag("missing colon")
            self.ws()
            if self.eof():
                self.flag("cut off")
                out[k] = None
                return out
            out[k] = self.value(depth + 1)
            self.after_member("}", "}")
        return out

    def arr(self, depth: int) -> list:
        self.pos += 1
        out: list = []
        while self.next_member("]", "unclosed list"):
            before = self.unterminated
            v = self.value(depth + 1)
            if self.unterminated > before and isinstance(v, str):
                self.flag("cut-off last list item dropped")  # the token limit hit mid-item
            else:
                out.append(v)
            self.after_member("]", "]}")
        return out


def lenient_loads(text: str):
    """Parse one JSON-ish value from the start of ``text``; returns (value, flags)."""
    p = _Lenient(text)
    return p.value(), p.flags


# ----------------------------------------------------------------------------------------------
# finding the answer object


def _pick(obj: dict) -> tuple[dict, list[str]]:
    """Map the object's keys onto profile/intents (case and common synonyms)."""
    found: dict = {}
    reasons = []
    for k, v in obj.items():
        if isinstance(v, str) and _PLACEHOLDER.match(v.strip()):
            return {}, []  # the template's example echoed back, not an answer
        key = str(k).strip().lower().replace(" ", "_")
        for target, names in (("profile", _PROFILE_KEYS), ("intents", _INTENT_KEYS)):
            if key in names and target not in found:
                found[target] = v
                if str(k) != target:
                    reasons.append(f"key {str(k)!r} read as {target!r}")
    return found, reasons


def _strict_objects(text: str) -> list[tuple[int, dict]]:
    dec = json.JSONDecoder()
    out = []
    i = text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except (ValueError, RecursionError):
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            out.append((i, obj))
        i = text.find("{", end if isinstance(obj, dict) else i + 1)
    return out


def _best(cands: list[tuple[int, dict, list[str]]]):
    """The last candidate with both keys, else the last with the most keys."""
    if not cands:
        return None
    return max(cands, key=lambda c: (len(c[1]), c[0]))


def _lenient_candidates(text: str, pattern: re.Pattern, synth: bool) -> list:
    out = []
    for m in list(pattern.finditer(text))[-_MAX_CANDIDATES:]:
        if synth and text[: m.start()].rstrip().endswith("{"):
            continue  # already read as an object
        try:
            obj, flags = lenient_loads(("{" if synth else "") + text[m.start() :])
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            found, why = _pick(obj)
            if found:
                out.append((m.start(), found, (["no opening brace"] if synth else []) + flags + why))
    return out


def _has(found: dict, key: str) -> bool:
    v = found.get(key)
    return v is not None and v != "" and v != [] and v != {}


def _find_answer(text: str) -> tuple[dict | None, list[str]]:
    cands = []
    for pos, obj in _strict_objects(text):
        found, why = _pick(obj)
        if found:
            cands.append((pos, found, why))
    best = _best(cands)
    if best is not None and len(best[1]) == 2:
        return best[1], best[2]

    cands += _lenient_candidates(text, _KEY_START, synth=False)
    if not any(len(c[1]) == 2 for c in cands):
        # '"profile": ..., "intents": [...]' without an opening brace, or a key outside its object
        cands += _lenient_candidates(text, _QUOTED_KEY, synth=True)
    best = _best(cands)
    if best is not None:
        found, reasons = dict(best[1]), list(best[2])
        for key in ("profile", "intents"):
            if _has(found, key):
                continue
            # '{"profile": "..."}, {"intents": [...]}': take the missing field from another object,
            # the nearest one after the chosen object if any, else the last one before it
            donors = [c for c in cands if c is not best and _has(c[1], key)]
            after = [c for c in donors if c[0] > best[0]]
            donor = min(after, key=lambda c: c[0]) if after else (donors[-1] if donors else None)
            if donor is not None:
                found[key] = donor[1][key]
                reasons += [r for r in donor[2] if r not in reasons]
                reasons.append("profile and intents read from separate objects")
        return found, reasons

    # 'Profile: ...' / 'Intents: a, b, c' lines
    found: dict = {}
    for m in _LINE.finditer(text):
        name, value = m.group(1).lower(), m.group(2).strip()
        target = "profile" if name in ("profile", "summary") else "intents"
        if target == "intents" and value.startswith("["):
            value, _ = lenient_loads(value)
        found[target] = value  # the last such line wins
    if found:
        return found, ["no JSON object; read 'key: value' lines"]
    return None, []


# ----------------------------------------------------------------------------------------------
# cleaning the fields


def _dedupe_sentences(text: str) -> tuple[str, bool]:
    parts = re.split(r"(?<=[.!?])\s+", text)
    seen, out = set(), []
    for p in parts:
        key = p.strip().lower()
        if key and key in seen:
            continue
        seen.add(key)
        out.append(p)
    return " ".join(out), len(out) < len(parts)


def _collapse_runs(text: str) -> tuple[str, bool]:
    """Collapse a phrase of 1-6 words repeated 3+ times in a row to one copy."""
    new = re.sub(r"\b((?:\S+\s+){0,5}?\S+?)(?:[\s,;]+\1\b){2,}", r"\1", text, flags=re.I)
    return new, new != text


def _clip_words(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    sp = cut.rfind(" ")
    return (cut[:sp] if sp > max_chars // 2 else cut).rstrip(" ,;:")


def clean_profile(value, max_chars: int = 600) -> tuple[str, list[str]]:
    reasons = []
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if isinstance(v, (str, int, float)) and str(v).strip())
        reasons.append("profile given as a list")
    elif isinstance(value, dict):
        inner = [v for v in value.values() if isinstance(v, str)]
        value = " ".join(inner)
        reasons.append("profile given as an object")
    elif value is None:
        value = ""
    elif not isinstance(value, str):
        value = str(value)
        reasons.append("profile is not a string")
    text = " ".join(value.split()).strip(" \"'")
    text, runs = _collapse_runs(text)
    text, dup = _dedupe_sentences(text)
    if runs or dup:
        reasons.append("repetition removed from profile")
    if len(text) > max_chars:
        text = _clip_words(text, max_chars)
        reasons.append(f"profile clipped to {max_chars} chars")
    if text.lower() in (
        "",
        "...",
        "<one or two sentences summarising the item>",
        "<one or two sentences describing the user's preferences>",
    ):
        text = ""
    return text, reasons


def _flatten_intents(value, reasons: list[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        reasons.append("intents given as a string")
        return [p for p in re.split(r"[,;\n|]+", value)]
    if isinstance(value, dict):
        reasons.append("intents given as an object")
        return [str(v) for v in value.values() if isinstance(v, (str, int, float))] or [str(k) for k in value]
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, dict):
                reasons.append("intent items are objects")
                strs = [x for x in v.values() if isinstance(x, str)]
                if strs:
                    out.append(strs[0])
            elif isinstance(v, (list, tuple)):
                reasons.append("nested intent lists flattened")
                out.extend(_flatten_intents(list(v), []))
            elif v is None or isinstance(v, bool):
                reasons.append("non-text intents dropped")
            else:
                out.append(str(v))
        return out
    reasons.append("intents is not a list")
    return [str(value)]


def clean_intents(value, max_intents: int = 8, max_chars: int = 80) -> tuple[list[str], list[str]]:
    reasons: list[str] = []
    raw = _flatten_intents(value, reasons)
    out, seen = [], set()
    dropped_empty = dup = clipped = stripped = False
    for item in raw:
        t0 = " ".join(str(item).split())
        t = _BULLET.sub("", t0).strip(" \"'`.,;:")
        stripped |= bool(t) and t != t0
        if not t or t in ("...", "<short intent>"):
            dropped_empty = True
            continue
        if len(t) > max_chars:
            t = _clip_words(t, max_chars)
            clipped = True
        key = t.lower()
        if key in seen:
            dup = True
            continue
        seen.add(key)
        out.append(t)
    if stripped:
        reasons.append("bullets, numbering or punctuation stripped from intents")
    if dropped_empty:
        reasons.append("empty or placeholder intents dropped")
    if dup:
        reasons.append("duplicate intents removed")
    if clipped:
        reasons.append(f"long intents clipped to {max_chars} chars")
    if len(out) > max_intents:
        out = out[:max_intents]
        reasons.append(f"more than {max_intents} intents; kept the first {max_intents}")
    return out, reasons


def parse_output(
    text: str | None, max_intents: int = 8, max_profile_chars: int = 600, max_intent_chars: int = 80
) -> ParseResult:
    """Read the answer object out of one generation; see the module docstring for the statuses."""
    if text is None or not str(text).strip():
        return ParseResult(FAILED, reasons=["empty output"])
    text = str(text)
    found, reasons = _find_answer(text)
    if found is None:
        return ParseResult(FAILED, reasons=["no JSON object with 'profile' or 'intents' found"])
    reasons = list(reasons)
    profile, r1 = clean_profile(found.get("profile"), max_profile_chars)
    intents, r2 = clean_intents(found.get("intents"), max_intents, max_intent_chars)
    reasons += r1 + r2
    missing = []
    if not profile:
        missing.append("no profile" if "profile" not in found else "empty profile")
    if not intents:
        missing.append("no intents" if "intents" not in found else "empty intents")
    if missing:
        return ParseResult(FAILED, profile, intents, missing + reasons)
    return ParseResult(REPAIRED if reasons else OK, profile, intents, reasons)


JSON_PREFIX = '{"profile": "'  # what a prefilled re-ask puts after the model's own reasoning


def reasoning_of(text: str, max_chars: int) -> str:
    """The reasoning part of an answer: the text before its first '{', clipped at a sentence end."""
    head = text.split("{", 1)[0].replace("```json", "").replace("```", "")
    head, _ = _dedupe_sentences(" ".join(head.split()))  # small models loop; keep one copy
    if len(head) <= max_chars:
        return head
    cut = head[:max_chars]
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[: end + 1] if end > max_chars // 3 else cut
