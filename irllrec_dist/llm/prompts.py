"""Chain-of-thought prompt templates, kept as text files and versioned by a hash of their text.

A template file (``configs/prompts/item.txt``, ``configs/prompts/user.txt``) has
``#`` comment lines and two sections, ``[system]`` and ``[user]``. Placeholders
are replaced literally (no ``str.format``, so the JSON example in the template
and braces in item texts need no escaping):

- item: ``{text}``, ``{max_intents}``
- user: ``{items}`` (numbered item texts), ``{n_items}``, ``{max_intents}``

The prompt hash is the first 12 hex digits of SHA-256 over the template file's
bytes: editing a template (even a comment) changes the hash, and with it the
key of every output row, so the stage regenerates.

Users are described only by items they interacted with in the *training*
split: at most ``max_items`` of them, chosen by a seeded draw per user
(``numpy.random.default_rng([seed, user_id])``) and listed in item-id order,
so the same dataset and seed always give the same prompt.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from dataclasses import dataclass

import numpy as np

DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs" / "prompts"
SIDES = ("items", "users")
_FILE = {"items": "item.txt", "users": "user.txt"}


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str
    hash: str
    source: str  # where it was read from, for logs

    def messages(self, **fields: str) -> list[dict]:
        out = []
        if self.system:
            out.append({"role": "system", "content": _fill(self.system, fields)})
        out.append({"role": "user", "content": _fill(self.user, fields)})
        return out


def _fill(text: str, fields: dict) -> str:
    # One pass over the placeholders, so a value that itself contains "{text}" is not re-expanded.
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in fields)) if fields else None
    if pattern is None:
        return text
    return pattern.sub(lambda m: str(fields[m.group(0)[1:-1]]), text)


def parse_template(text: str, name: str = "<string>") -> PromptTemplate:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head = line.strip().lower()
        if head in ("[system]", "[user]"):
            current = head[1:-1]
            if current in sections:
                raise ValueError(f"{name}: section [{current}] appears twice")
            sections[current] = []
            continue
        if current is None:
            if line.strip():
                raise ValueError(f"{name}: text before the first [system]/[user] section: {line!r}")
            continue
        sections[current].append(line)
    if "user" not in sections:
        raise ValueError(f"{name}: no [user] section; expected [system] (optional) and [user]")
    system = "\n".join(sections.get("system", [])).strip()
    user = "\n".join(sections["user"]).strip()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return PromptTemplate(name=name, system=system, user=user, hash=digest, source=name)


def load_template(side: str, prompt_dir: str | None = None) -> PromptTemplate:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    path = pathlib.Path(prompt_dir or DEFAULT_DIR) / _FILE[side]
    try:
        text = path.read_text()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read prompt template ({e})") from e
    return parse_template(text, str(path))


def clip(text: str, max_chars: int) -> str:
    """Whitespace-normalised text cut at a word boundary to at most max_chars (plus an ellipsis)."""
    text = " ".join(str(text).split())
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + " ..."


def item_messages(tpl: PromptTemplate, text: str, max_chars: int, max_intents: int) -> list[dict]:
    return tpl.messages(text=clip(text, max_chars), max_intents=str(max_intents))


def user_messages(tpl: PromptTemplate, item_texts: list[str], max_chars_per_item: int, max_intents: int) -> list[dict]:
    listing = "\n".join(f"{k + 1}. {clip(t, max_chars_per_item)}" for k, t in enumerate(item_texts))
    return tpl.messages(items=listing, n_items=str(len(item_texts)), max_intents=str(max_intents))


def choose_user_items(
    train: np.ndarray, item_has_text: np.ndarray, n_users: int, max_items: int, seed: int
) -> dict[int, np.ndarray]:
    """Per user: up to max_items distinct *training* items that have text, seeded draw, item-id order.

    ``train`` is the (n, 2) user/item training edge array; val/test edges are
    never passed here, so they cannot leak into a user's prompt.
    """
    out: dict[int, np.ndarray] = {}
    if len(train) == 0:
        return out
    u, i = train[:, 0], train[:, 1]
    keep = item_has_text[i]
    u, i = u[keep], i[keep]
    order = np.lexsort((i, u))
    u, i = u[order], i[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    for uu, items in zip(np.split(u, bounds), np.split(i, bounds)):
        if len(uu) == 0:
            continue
        items = np.unique(items)
        if len(items) > max_items:
            rng = np.random.default_rng([seed, int(uu[0])])
            items = np.sort(rng.choice(items, size=max_items, replace=False))
        out[int(uu[0])] = items
    return out


def first_sentences(text: str, n: int = 2, max_chars: int = 300) -> str:
    """The fallback profile: the first n sentences of a text, clipped."""
    text = " ".join(str(text or "").split())
    parts = re.split(r"(?<=[.!?])\s+", text)
    return clip(" ".join(p for p in parts[:n] if p), max_chars)


def render_plain(messages: list[dict]) -> str:
    """Prompt text for a tokenizer without a chat template."""
    lines = []
    for m in messages:
        lines.append(f"{m['role'].capitalize()}: {m['content']}")
    lines.append("Assistant:")
    return "\n\n".join(lines)
