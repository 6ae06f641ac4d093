"""API keys stay out of what obliviate writes and prints: a key is read from the environment
variable a setting names (`generation.api_key_env`; the harmful judge's server reads OPENAI_API_KEY),
never given as a value, and no URL holds one: config.yaml, result files and messages hold the
settings as given."""

from __future__ import annotations

import re
import urllib.parse
import warnings

from obliviate.errors import UserError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_PARAM = re.compile(r"key|token|secret|passw|auth|sig", re.IGNORECASE)
#: "scheme://" or "//" before a URL's host (user:password@ follows it)
_AUTHORITY_START = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?//")


def url_credential(url: str) -> str | None:
    """The credential written into `url` ('user:password@', '?api_key='), or None. A URL is
    saved in config.yaml and shown in messages: a key in it would be written and printed. Read
    from the text itself, not only from what urlsplit makes of it: 'user:key@host/v1' (no scheme)
    parses as scheme 'user', and an unbalanced '[' raises, yet both reach config.yaml and the
    backend's "must be an http(s) URL ..., got '<url>'" refusal."""
    text = str(url).strip()
    authority = re.split(r"[/?#]", _AUTHORITY_START.sub("", text, count=1), maxsplit=1)[0]
    if "@" in authority:
        return "user:password@"
    try:
        names = [name for name, _ in urllib.parse.parse_qsl(text.partition("?")[2].partition("#")[0],
                                                             keep_blank_values=True)]
    except ValueError:
        return None
    return next((f"?{name}=" for name in names if _SECRET_PARAM.search(name)), None)


def check_key_settings(base_url: str, api_key_env: str, option: str, key_option: str) -> None:
    """Refuse an `api_key_env` that holds the key itself instead of naming a variable, and a
    credential in the URL; the messages never repeat either value."""
    if not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env):
        raise UserError(f"{key_option} must name an environment variable (letters, digits, _), not hold the key; "
                        f"export the key (OPENAI_API_KEY=...) and set {key_option} to that name")
    if (credential := url_credential(base_url)) is not None:
        raise UserError(f"{option} holds a credential ({credential}), which would be saved with the run and shown "
                        f"in messages; give the URL without it and export the key as {api_key_env}")


def check_key(key: str, api_key_env: str, base_url: str, local: bool) -> None:
    """Before a key is sent: one that an HTTP header cannot carry (a newline, a space, non-ASCII)
    is told as such, not as an unreachable server or an encoding traceback, and never shown; a
    key about to cross the network unencrypted (plain http to another machine: an exported
    OPENAI_API_KEY reaching a LAN server) is warned about."""
    if not (key.isascii() and key.isprintable() and " " not in key):
        raise UserError(f"the environment variable {api_key_env} holds a space, a newline or a non-ASCII "
                        "character, which an HTTP header cannot carry; set it to the key alone")
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme == "http" and not local:
        warnings.warn(f"the key in {api_key_env} is sent unencrypted (plain http) to {parts.hostname}; use https, "
                      f"or unset {api_key_env} for a server that needs no key", stacklevel=3)
