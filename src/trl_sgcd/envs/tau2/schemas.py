"""Explicit JSON schemas for environment tools, where a docstring and type hints cannot express the arguments.

TRL (1.16) turns every public method of an `environment_factory` class into a tool and hands the bound methods to the
chat template and to the response parser, which both call `transformers.utils.get_json_schema(method)`. That schema
is built from type hints and the Google-style docstring only, so nested arguments lose their fields: τ²'s
`book_reservation(flights: list[FlightInfo], passengers: list[Passenger], payment_methods: list[Payment], ...)`
becomes three bare `array`s, and the model is never told that a passenger has `first_name`, `last_name` and `dob`.

The hook below is the smallest change that fixes this without touching TRL: a function may carry its explicit schema
in a `__json_schema__` attribute (`{"type": "function", "function": {...}}`, the format `get_json_schema` returns), and
[`install_schema_hook`] makes `get_json_schema` return that attribute when it is present. Every other function gets
exactly the schema it got before. The three places transformers binds the name (its `chat_template_utils` module, the
`transformers.utils` re-export and the response parser) are patched once, idempotently.
"""

from __future__ import annotations

import functools
import importlib

SCHEMA_ATTRIBUTE = "__json_schema__"
_BINDINGS = (
    "transformers.utils.chat_template_utils",
    "transformers.utils",
    "transformers.utils.chat_parsing.response_parser",
)


def explicit_schema(func) -> dict | None:
    """The explicit schema a tool carries (on the function, or on the function of a bound method), or `None`."""
    target = getattr(func, "__func__", func)
    schema = getattr(target, SCHEMA_ATTRIBUTE, None)
    return dict(schema) if isinstance(schema, dict) else None


def install_schema_hook() -> bool:
    """
    Make `transformers`' `get_json_schema` honour a tool's `__json_schema__` attribute (idempotent).

    Returns:
        `bool`: `True` if the hook was installed now, `False` if it already was.
    """
    base = importlib.import_module(_BINDINGS[0]).get_json_schema
    if getattr(base, "_honours_explicit_schema", False):
        return False

    @functools.wraps(base)
    def get_json_schema(func):
        schema = explicit_schema(func)
        return schema if schema is not None else base(func)

    get_json_schema._honours_explicit_schema = True
    for name in _BINDINGS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an older transformers without the response parser
            continue
        if hasattr(module, "get_json_schema"):
            module.get_json_schema = get_json_schema
    return True


def fallback_annotation(schema: dict):
    """A plain Python type for a JSON-schema property (what `get_json_schema` would need without the hook)."""
    kind = schema.get("type")
    return {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}.get(
        kind, str
    )


def google_docstring(function_schema: dict) -> str:
    """A Google-style docstring from a tool schema (description + one `Args:` line per parameter)."""
    description = (function_schema.get("description") or function_schema["name"]).strip()
    properties = function_schema.get("parameters", {}).get("properties", {})
    lines = [description]
    if properties:
        lines += ["", "Args:"]
        for name, prop in properties.items():
            text = " ".join((prop.get("description") or name).split())
            lines.append(f"    {name}: {text}")
    return "\n".join(lines)
