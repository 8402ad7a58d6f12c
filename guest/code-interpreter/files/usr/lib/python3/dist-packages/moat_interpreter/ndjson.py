"""The /execute stream's encoding: one JSON object per line, ASCII only, never a blank line.

The official client splits the body on "\\n" and JSON.parse()s every piece (a blank line or a
partial object fails the whole run), and it decodes each network chunk on its own, so a UTF-8
sequence split across two reads would turn into U+FFFD: every non-ASCII character is escaped.
JSON has no NaN or Infinity (JSON.parse rejects them): they become null.
"""

import json
import math

__all__ = ["encode_line", "sanitize"]


def sanitize(value, _depth=0):
    """A copy of `value` that json can encode as strict JSON: NaN and infinities become None,
    tuples and sets lists, non-string keys strings, and anything else unknown its str()."""
    if _depth > 64:
        return None
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): sanitize(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [sanitize(v, _depth + 1) for v in value]
    # numpy scalars and arrays, without importing numpy here
    item = getattr(value, "tolist", None)
    if callable(item):
        try:
            return sanitize(item(), _depth + 1)
        except Exception:  # noqa: BLE001 - anything it raises makes it a string below
            pass
    return str(value)


def encode_line(obj):
    """`obj` as one NDJSON line (bytes, ending in exactly one b"\\n")."""
    text = json.dumps(sanitize(obj), ensure_ascii=True, allow_nan=False, separators=(", ", ": "))
    # ensure_ascii escapes every control character inside strings, and the separators have no
    # newline: the only "\n" is the terminator.
    return text.encode("ascii") + b"\n"
