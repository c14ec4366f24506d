"""`--loss` and `--metrics` items as text: a Keras name with arguments, for one output or all.

On the command line an item is `[OUTPUT=]NAME[:KEY=VALUE[:KEY=VALUE...]]`: arguments follow the
name after colons (commas separate the items of a list, so they cannot separate arguments),
each value read as a YAML scalar (true, 0.1, 3, null, a word). In a YAML config an item is a
name, or a mapping with the key `name` and the arguments beside it; several outputs map each
output to its items. This module only reads and writes the text (no Keras: config checks run
before TensorFlow is imported); model/objective.py makes Keras objects of it.

Example:
    parse("sparse_categorical_crossentropy:from_logits=true", "loss")
    # Named(name='sparse_categorical_crossentropy', args=(('from_logits', True),), output=None)
    parse("digit=sparse_top_k_categorical_accuracy:k=3", "metrics").output      # 'digit'
    items({"name": "categorical_crossentropy", "from_logits": True}, "loss")
    # ['categorical_crossentropy:from_logits=true']
    items({"digit": ["accuracy", {"name": "auc", "from_logits": True}]}, "metrics")
    # ['digit=accuracy', 'digit=auc:from_logits=true']
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from distft.errors import DistftError

# A Keras name: a built-in's (sparse_categorical_crossentropy, SparseCategoricalCrossentropy)
# or a registered class's (package>Name).
_NAME = re.compile(r"[A-Za-z_][\w.>]*")
_KEY = re.compile(r"[A-Za-z_]\w*")
EXAMPLES = {"loss": "sparse_categorical_crossentropy:from_logits=true",
            "metrics": "accuracy,sparse_top_k_categorical_accuracy:k=3",
            "early_stopping": "val_loss:patience=3", "keep_best": "val_accuracy"}
SYNTAX = "NAME:KEY=VALUE[:KEY=VALUE...]"


@dataclass(frozen=True)
class Named:
    """A Keras loss or metric by name, with its arguments (in the order given), for the output
    `output` (None: every output)."""

    name: str
    args: tuple = ()  # ((key, value), ...)
    output: Optional[str] = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)

    def text(self) -> str:
        """The item as the command line writes it."""
        return (f"{self.output}=" if self.output else "") + self.name + "".join(
            f":{k}={scalar(v)}" for k, v in self.args)


def parse(item: str, flag: str) -> Named:
    """One `[OUTPUT=]NAME[:KEY=VALUE...]` item of --`flag`; DistftError naming what is wrong."""
    head, _, rest = item.strip().partition(":")
    output, eq, name = head.partition("=")
    if not eq:
        output, name = None, head
    output, name = (output.strip() or None) if output is not None else None, name.strip()
    if not _NAME.fullmatch(name) or (eq and not output):
        raise DistftError(f"--{flag}={item}: '{head}' is not a Keras name (or OUTPUT=NAME): write "
                          f"{SYNTAX}, arguments after colons (commas separate items), e.g. "
                          f"--{flag}={EXAMPLES[flag]}")
    args: dict[str, Any] = {}
    for part in rest.split(":") if rest else []:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not _KEY.fullmatch(key):
            raise DistftError(f"--{flag}={item}: '{part}' is not an argument KEY=VALUE: write "
                              f"{SYNTAX} (colons between arguments, since commas separate "
                              f"items), e.g. --{flag}={EXAMPLES[flag]}")
        if key in args:
            raise DistftError(f"--{flag}={item}: argument {key} is given twice: give it once")
        args[key] = _value(value, item, flag)
    return Named(name, tuple(args.items()), output)


def parse_all(items: Optional[list], flag: str) -> list[Named]:
    return [parse(i, flag) for i in items or ()]


def _value(text: str, item: str, flag: str) -> Any:
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = []
    if isinstance(value, (list, dict)) or not text.strip():
        raise DistftError(f"--{flag}={item}: '{text}' is not one value: an argument takes a "
                          "number, true/false, null or a word")
    return value


def scalar(value: Any) -> str:
    """A value as a YAML scalar that reads back as the same value (true, 0.1, null, word)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def items(value: Any, flag: str) -> list[str]:
    """--`flag`'s YAML value (a name, a list, a mapping) as its command-line items.

    `{name: NAME, KEY: VALUE, ...}` is one item with arguments; any other mapping gives each
    output (its keys) its items: a name, a `{name: ...}` mapping, or a list of them."""
    if isinstance(value, dict) and "name" in value:
        return [_one(value, flag)]
    if isinstance(value, dict):
        return [f"{output}={text}" for output, values in value.items()
                for text in items(values, flag)]
    if isinstance(value, (list, tuple)):
        return [text for v in value for text in items(v, flag)]
    return [i.strip() for i in str(value).split(",") if i.strip()]


def _one(mapping: dict, flag: str) -> str:
    """`{name: NAME, KEY: VALUE, ...}` as `NAME:KEY=VALUE...`."""
    name = mapping["name"]
    bad = {k: v for k, v in mapping.items() if isinstance(v, (list, dict))}
    if not isinstance(name, str) or bad:
        raise DistftError(f"--{flag}: {mapping} is not a Keras name with arguments: write "
                          f"{{name: NAME, KEY: VALUE, ...}} with one value each, e.g. "
                          f"{{name: sparse_categorical_crossentropy, from_logits: true}}")
    return name + "".join(f":{k}={scalar(v)}" for k, v in mapping.items() if k != "name")
