"""Hydra's and OmegaConf's refusals of a command line, in nnlab's words: one line naming the key,
the value, what is expected, and the nearest valid key or option ("did you mean ...").

Pure text work on the errors' messages (their wording is Hydra 1.3's and OmegaConf 2.3's; a message
not recognised here is left as it is). The valid keys come from nnlab's schema (``nnlab.spec``).
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable

_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'\. To append to your config use \+")
_MISSING_OPTION = re.compile(r"Could not find '([^'/]+(?:/[^'/]+)*)/([^'/]+)'.*?Available options in '([^']+)':\s*(.*)")
_BAD_TYPE = re.compile(r"Error merging override ([^=\s]+)=(\S*).*?Value '([^']*)' of type '(\w+)' "
                       r"could not be converted to (\w+)")
_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (difflib's ratio >= 0.6), or None."""
    found = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return found[0] if found else None


def suggestion(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean model.depth?"`` or ``""``."""
    found = did_you_mean(word, choices)
    return f"; did you mean {found}?" if found else ""


def schema_keys() -> frozenset[str]:
    """Every dotted key nnlab's config has (the top-level schema and every group option's)."""
    from nnlab.spec import _SCHEMA_LEAVES

    return _SCHEMA_LEAVES()


def unknown_key_line(key: str) -> str:
    """``unknown config key model.dept; did you mean model.depth? (...)``."""
    return (f"unknown config key {key}{suggestion(key, schema_keys())} "
            "(`python -m nnlab.run --help` lists the keys)")


def type_requirement(expected: str, value: str, got: str) -> str:
    """``must be an integer, got 1.5`` from OmegaConf's conversion error's parts (``got``: its type)."""
    return f"must be {_TYPE_WORDS.get(expected, expected.lower())}, got {value or repr(value)}"


def omegaconf_requirement(err: BaseException) -> str:
    """What an OmegaConf ValidationError/ConfigKeyError says is wrong, in a few words."""
    text = " ".join(str(err).split())
    found = re.search(r"Value '([^']*)' of type '(\w+)' could not be converted to (\w+)", text)
    if found:
        return type_requirement(found[3], found[1], found[2])
    key = re.search(r"Key '([^']+)' not in '\w+'.*?full_key: (\S+)", text)
    if key:
        return f"nnlab has no such key{suggestion(key[2], schema_keys())}"
    return re.split(r" full_key: | object_type=| reference_type=", text)[0]


def hydra_refusal(text: str) -> str | None:
    """A Hydra refusal (its message and its cause's, flattened to one line) in nnlab's words, or None.

    * ``Could not override 'model.dept'. To append ... use +model.dept=3`` -> unknown key, did you mean;
    * ``Could not find 'activation/rleu' ... Available options in 'activation': ...`` -> not an
      option, did you mean, the options;
    * ``Error merging override model.depth=1.5 (Value '1.5' of type 'float' could not be converted
      to Integer ...)`` -> the key, the value, the type expected.
    """
    found = _UNKNOWN_KEY.search(text)
    if found:
        return unknown_key_line(found[1])
    found = _MISSING_OPTION.search(text)
    if found:
        group, option, options = found[1], found[2], found[4].split()
        return (f"{group}={option} is not an option{suggestion(option, options)} "
                f"(choices: {', '.join(options)})")
    found = _BAD_TYPE.search(text)
    if found:
        key, value, expected = found[1], found[3], found[5]
        return f"invalid config: {key}={value} ({type_requirement(expected, value, found[4])})"
    return None
