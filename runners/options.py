"""``--cfg-options key=value ...`` (mmsegmentation's convention): typed overrides of any method-config or
recipe field, checked before a model is built.

Keys are dotted paths: ``model.<field>[.<field>...]`` into the method's config dataclass (e.g.
``model.head.num_queries=50``, ``model.fft_axes=batch_channel``) and ``recipe.<field>`` into its
:class:`~methods.base.TrainRecipe` (e.g. ``recipe.iterations=100``). A value is parsed as a Python literal
(``50``, ``0.1``, ``(512, 512)``, ``True``, ``None``; anything else is a string) and converted to the field's
declared type; an unknown key or a value of the wrong type is a :class:`UsageError` naming the valid keys.
The released profile (:mod:`runners.profiles`) applies its settings through the same functions.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import types
import typing
from typing import Any, Iterable, Sequence

from runners.preflight import UserError

SECTIONS = ("model", "recipe")


class UsageError(UserError, ValueError):
    """A user's mistake on the command line: the runner prints the one-line message and exits with code 2."""


# ---------------------------------------------------------------------------------------------- keys
def settable_keys(obj: Any, prefix: str) -> list[str]:
    """Dotted paths of every field that a command-line value can set (nested config dataclasses expanded)."""
    keys = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            keys += settable_keys(value, f"{prefix}.{f.name}")
        elif _settable(hints[f.name]):
            keys.append(f"{prefix}.{f.name}")
    return keys


def _settable(hint: Any) -> bool:
    """Scalars, None-able scalars, tuples and dicts of scalars; not tuples of config objects (param rules)."""
    if hint in (int, float, str, bool, type(None), Any):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType, tuple):
        return all(a is Ellipsis or _settable(a) for a in args)
    return origin is dict or hint is dict


def valid_keys(config: Any, recipe: Any) -> list[str]:
    return settable_keys(config, "model") + settable_keys(recipe, "recipe")


# ---------------------------------------------------------------------------------------------- values
def parse_literal(text: str) -> Any:
    """``"50"`` -> 50, ``"(512, 512)"`` -> (512, 512), ``"true"``/``"null"`` -> True/None, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def coerce(value: Any, hint: Any, key: str, text: str | None = None) -> Any:
    """``value`` converted to the type ``hint`` declares, or a :class:`UsageError` naming ``key``."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, text)
            except UsageError:
                continue
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if text is not None and value is not None and not isinstance(value, (list, tuple, dict)):
            return text.strip()  # "fft_norm=1" style: a string field keeps what was typed
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], key) for v in value)
            if len(args) == len(value):
                return tuple(coerce(v, a, key) for v, a in zip(value, args))
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
    raise UsageError(f"--cfg-options {key}={text if text is not None else value!r}: expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ---------------------------------------------------------------------------------------------- applying
def _field_hint(obj: Any, name: str) -> Any:
    return typing.get_type_hints(type(obj))[name]


def _replace_path(obj: Any, path: Sequence[str], text: str | None, value: Any, key: str) -> Any:
    name = path[0]
    if len(path) == 1:
        value = coerce(value, _field_hint(obj, name), key, text)
        return dataclasses.replace(obj, **{name: value})
    return dataclasses.replace(obj, **{name: _replace_path(getattr(obj, name), path[1:], text, value, key)})


def apply_overrides(config: Any, recipe: Any, overrides: Iterable[tuple[str, Any, str | None]]) -> tuple[Any, Any]:
    """Apply ``(key, value, typed text or None)`` overrides to (config, recipe); returns new objects.

    Each change goes through ``dataclasses.replace``, so a config's own checks (``__post_init__``) run and a
    value they reject is a :class:`UsageError` too."""
    keys = None
    for key, value, text in overrides:
        section, _, rest = key.partition(".")
        if keys is None:
            keys = set(valid_keys(config, recipe))
        if key not in keys:
            raise UsageError(unknown_key_message(key, sorted(keys)))
        try:
            if section == "model":
                config = _replace_path(config, rest.split("."), text, value, key)
            else:
                recipe = _replace_path(recipe, rest.split("."), text, value, key)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(f"--cfg-options {key}: {exc}") from None
    return config, recipe


def unknown_key_message(key: str, keys: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=1) or [k for k in keys if k.endswith("." + key.rsplit(".", 1)[-1])]
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"--cfg-options {key}: unknown key{hint}; valid keys: {', '.join(keys)}"


def parse_cfg_options(items: Sequence[str] | None) -> list[tuple[str, Any, str]]:
    """``["model.head.num_queries=50", ...]`` -> ``[(key, literal value, text), ...]`` (checked later)."""
    out = []
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--cfg-options {item!r}: use KEY=VALUE, e.g. model.head.num_queries=50")
        if key.split(".", 1)[0] not in SECTIONS or "." not in key:
            raise UsageError(f"--cfg-options {key}: keys start with model. or recipe. "
                             "(e.g. model.head.num_queries=50 recipe.iterations=100)")
        out.append((key, parse_literal(text), text))
    return out
