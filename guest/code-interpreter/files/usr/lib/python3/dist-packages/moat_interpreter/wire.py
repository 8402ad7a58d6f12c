"""What the interpreter server says on the wire and to its kernels, without I/O: language
names, the mapping of Jupyter messages to the client's NDJSON lines, and the code that sets and
restores env vars in each kernel language. Pure functions (tested on the host:
tests/unit/interpreter/test_wire.py).
"""

import json
import re

# Language -> Jupyter kernel name. `typescript` has no kernel here (it is not JavaScript).
KERNELS = {"python": "python3", "javascript": "javascript", "bash": "bash"}
ALIASES = {
    "": "python",
    "py": "python",
    "python3": "python",
    "ipython": "python",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
    "ts": "typescript",
    "sh": "bash",
    "shell": "bash",
}

# Jupyter MIME type -> the field of a `result` line; any other MIME type goes to `extra`.
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}
BASE64_FIELDS = ("png", "jpeg", "pdf")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def normalize_language(value):
    lang = (value or "").strip().lower()
    return ALIASES.get(lang, lang)


def strip_quotes(text):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def result_line(data, is_main):
    out = {"type": "result", "is_main_result": is_main}
    extra = {}
    for mime, value in (data or {}).items():
        field = MIME_FIELDS.get(mime)
        if field is None:
            extra[mime] = value
            continue
        if field == "text" and isinstance(value, str):
            value = strip_quotes(value)
        elif field in BASE64_FIELDS and isinstance(value, str):
            value = "".join(value.split())
        out[field] = value
    out["extra"] = extra
    return out


def iso(date):
    if date is None:
        return None
    if isinstance(date, str):
        return date
    try:
        return date.isoformat()
    except AttributeError:
        return str(date)


# Code that sets env vars in a kernel and restores them after one run, per language. `values`
# maps names (checked against ENV_NAME) to strings; None means unset.
def env_set_code(language, values):
    if language == "python":
        return "__import__('os').environ.update(%s)\n" % json.dumps(
            {k: v for k, v in values.items() if v is not None}
        ) + "".join(
            "__import__('os').environ.pop(%s, None)\n" % json.dumps(k)
            for k, v in values.items()
            if v is None
        )
    if language == "javascript":
        return "".join(
            "process.env[%s] = %s;\n" % (json.dumps(k), json.dumps(v))
            if v is not None
            else "delete process.env[%s];\n" % json.dumps(k)
            for k, v in values.items()
        )
    if language == "bash":
        return "".join(
            "export %s=%s\n" % (k, shell_quote(v)) if v is not None else "unset %s\n" % k
            for k, v in values.items()
        )
    return ""


def env_save_code(language, names):
    if language == "python":
        return "globals()['_moat_saved_env'] = {k: __import__('os').environ.get(k) for k in %s}\n" % (
            json.dumps(sorted(names))
        )
    if language == "javascript":
        return "globalThis.__moatSavedEnv = Object.fromEntries(%s.map((k) => [k, process.env[k]]));\n" % (
            json.dumps(sorted(names))
        )
    if language == "bash":
        return "".join(
            'if [ -n "${%s+x}" ]; then __moat_had_%s=1; __moat_old_%s=$%s; else __moat_had_%s=; fi\n'
            % (k, k, k, k, k)
            for k in sorted(names)
        )
    return ""


def env_restore_code(language, names):
    if language == "python":
        return (
            "(lambda o, s: [o.environ.__setitem__(k, v) if v is not None else o.environ.pop(k, None)"
            " for k, v in s.items()])(__import__('os'), globals().pop('_moat_saved_env', {}))\n"
        )
    if language == "javascript":
        return (
            "for (const [k, v] of Object.entries(globalThis.__moatSavedEnv || {})) {"
            " if (v === undefined) delete process.env[k]; else process.env[k] = v; }\n"
            "delete globalThis.__moatSavedEnv;\n"
        )
    if language == "bash":
        return "".join(
            'if [ -n "$__moat_had_%s" ]; then export %s="$__moat_old_%s"; else unset %s; fi;'
            " unset __moat_had_%s __moat_old_%s\n" % (k, k, k, k, k, k)
            for k in sorted(names)
        )
    return ""


def shell_quote(value):
    return "'" + value.replace("'", "'\\''") + "'"


def error_line(content):
    tb = content.get("traceback") or []
    if isinstance(tb, list):
        tb = "\n".join(str(line) for line in tb)
    return {
        "type": "error",
        "name": content.get("ename", ""),
        "value": content.get("evalue", ""),
        "traceback": tb,
    }


def failure_line(name, value):
    """An `error` line of the server's own (the run did not get to its end), without traceback."""
    return {"type": "error", "name": name, "value": value, "traceback": ""}
