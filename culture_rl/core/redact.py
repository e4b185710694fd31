"""Keep secrets out of what a run writes: config dumps, ``metrics.jsonl``, ``eval.json``.

Credentials belong in the environment (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``, a cloud's own
credential chain), never in a config. But a user can still hand one over on the command line —
most often inside an address, ``resources.address=ray://user:pass@head:10001`` — and what a run
writes is shared widely (run folders on NFS, reports passed around, dashboards). So every writer
passes its record through :func:`redact` first. Pure and dependency-free, so it is unit-tested and
cheap enough to run on every metrics line.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***REDACTED***"

# A key is split into lower-case words (snake, kebab, dotted, camelCase, paths), and looks secret
# when one word is, or ends in, a secret word: ``hf_token``, ``clientSecret``, ``DB_PASSWORD``,
# ``aws_secret_access_key``, ``auth``. Plain "tokens" is left alone on purpose: language models
# count tokens everywhere (``max_new_tokens``, ``tokens_per_s``) and those are no secrets.
_SECRET_WORD = re.compile(r"(token|secrets?|passwords?|passwd|apikeys?|accesskeys?|privatekeys?"
                          r"|credentials?)$")
_SECRET_EXACT = {"auth", "authorization"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key")}
# ... unless the last word says the value only *names* or *locates* a secret, or describes it:
# ``auth_token_path``, ``RAY_AUTH_MODE``, ``pad_token_id``, ``secret_name`` are safe to show,
# and so is a metric over tokens (TRL logs ``mean_token_accuracy`` every step).
_HARMLESS_LAST = {"id", "ids", "path", "file", "dir", "mode", "type", "name", "env", "count",
                  "accuracy"}

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
# scheme://userinfo@host: the user info (user, user:password, or a bare token) is dropped. Greedy
# up to the last '@' before the path, so an unescaped '@' inside a password goes too.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]+(?:@[^\s/?#@]*)*@")
# KEY=value inside a text (a command line, an env prefix, a URL query): the value goes.
_ASSIGNMENT = re.compile(r"(?<![\w.\-])(-{0,2}[A-Za-z_][\w.\-]*)=([^\s&;'\"]+)")


def _words(key: str) -> list[str]:
    return [w for w in _NON_ALNUM.split(_CAMEL.sub(r"\1_\2", key).lower()) if w]


def looks_secret(key: str) -> bool:
    """Whether the value of ``key`` should never be written out."""
    words = _words(key)
    if not words or words[-1] in _HARMLESS_LAST:
        return False
    if set(zip(words, words[1:])) & _SECRET_PAIRS:
        return True
    return any(w in _SECRET_EXACT or _SECRET_WORD.search(w) for w in words)


def redact_text(text: str) -> str:
    """``text`` with URL credentials and ``SECRET_KEY=value`` values removed."""
    text = _URL_USERINFO.sub(r"\1", text)
    return _ASSIGNMENT.sub(lambda m: f"{m[1]}={REDACTED}" if looks_secret(m[1]) else m[0], text)


def _mask(value: Any) -> Any:
    # An unset secret (None, "") is shown as unset: that tells a reader it comes from elsewhere.
    return value if value is None or value == "" else REDACTED


def redact(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with secret-looking keys' values masked and every
    string passed through :func:`redact_text`; other values are returned as they are."""
    if isinstance(obj, dict):
        return {k: _mask(v) if isinstance(k, str) and looks_secret(k) else redact(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


# ------------------------------------------------------------------ shipped files (checked)

# Values that point at a secret instead of holding one: an environment variable ($VAR, ${VAR},
# $(command)), a file (/path, ~/path, ./path) or a placeholder (<your token>).
_REFERENCE = re.compile(r"^(\$|~|/|\./|<)")


def _is_literal(value: Any) -> bool:
    if value is None or isinstance(value, (bool, dict, list)):
        return False  # unset, a switch, or a structure whose leaves are checked themselves
    text = str(value).strip()
    return bool(text) and not _REFERENCE.match(text)


def literal_secrets(tree: Any, where: str = "") -> list[str]:
    """Dotted paths in a parsed config file (YAML/JSON) where a secret is written out: a
    secret-looking key with a literal value, ``{name: SECRET_ENV, value: literal}`` (Kubernetes
    env lists) and strings with credentials in a URL or a ``SECRET=literal`` assignment."""
    found: list[str] = []
    if isinstance(tree, dict):
        name = tree.get("name")
        if isinstance(name, str) and looks_secret(name) and _is_literal(tree.get("value")):
            found.append(f"{where}{name}")
        for key, value in tree.items():
            if looks_secret(str(key)) and _is_literal(value):
                found.append(f"{where}{key}")
            else:
                found += literal_secrets(value, f"{where}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += literal_secrets(value, f"{where}{i}.")
    elif isinstance(tree, str):
        found += [f"{where.rstrip('.')}: {line_secret}" for line_secret in text_secrets(tree)]
    return found


def text_secrets(text: str) -> list[str]:
    """Credentials written out in free text (a command, a comment): ``scheme://user:pass@`` and
    ``SECRET_KEY=literal``. References (``TOKEN=$TOKEN``) are fine."""
    found = [m[0] for m in _URL_USERINFO.finditer(text)]
    found += [m[0] for m in _ASSIGNMENT.finditer(text) if looks_secret(m[1]) and _is_literal(m[2])]
    return found
