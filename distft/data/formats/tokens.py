"""Token ids: what `distft shard --model=MODEL` writes of text records, so that a large corpus
is tokenized once rather than at every epoch of every run.

A record holds what the model's own preprocessor (a Keras Hub task's) gives its text, each
tensor as an int64 feature of fixed length: the model's inputs (`token_ids`, `padding_mask`,
a classifier's `segment_ids`), the targets `y` (a causal LM's next tokens, or a class id) and a
causal LM's `sample_weight` (0 for padding and for a pair's prompt). They are stored as the
preprocessor gives them rather than as L + 1 ids from which a reader would cut inputs, targets
and weights (as CausalLMPreprocessor does): training then reads the very tensors it would
have made from the text (the same run, to float tolerance), any preprocessor's output fits
(a classifier's segments, any packing side, a pair's zero-weighted prompt) with no second
copy of its packing rules, and the cost is about twice the bytes of the ids alone (varints:
a byte for a mask, one to three for an id). The manifest records which preprocessor wrote them
(its class and vocabulary size) and the sequence length; training refuses another.

Example:
    tokenizer = Tokenizer(text_shards_layout, model.preprocessor, sequence_length=128)
    token_examples = tokenizer(text_examples)     # serialized Examples in, serialized out
    tokenizer.layout.record()                     # {"x_kind": "tokens", "sequence_length": 128, ...}
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from distft.data.formats.base import Decoder
from distft.data.formats.text import TFRecordTextLayout, TextOptions
from distft.errors import DistftError

TARGETS = ("y", "sample_weight")  # the stored tensors past the model's inputs, in this order


def written_by(preprocessor: Any) -> tuple[str, int]:
    """What identifies the tokens a preprocessor makes: its class name and vocabulary size."""
    return type(preprocessor).__name__, int(preprocessor.tokenizer.vocabulary_size())


def _named(cls: str, vocabulary_size: int) -> str:
    return f"{cls} (a vocabulary of {vocabulary_size})"


@dataclass(frozen=True)
class TFRecordTokenLayout(TFRecordTextLayout):
    """Token-id shards: the preprocessor's tensors a record (see the module's docstring),
    `keys` naming the text fields they came from (with the sequence length), `label` "y" for
    a classifier's class ids."""

    tensors: tuple = ()  # (name, dtype, shape) of each stored tensor: the inputs, then TARGETS
    inputs: tuple = ()  # the names of the model's inputs among `tensors`
    preprocessor_class: str = ""  # what wrote them (see written_by)
    vocabulary_size: int = 0

    @classmethod
    def from_record(cls, saved: dict, features: dict, compression: str) -> TFRecordTokenLayout:
        """The layout a manifest's record (see `record`) and features describe."""
        return cls(TextOptions.of(saved["fields"], int(saved["sequence_length"])), saved["label"],
                   compression=compression,
                   tensors=tuple((k, f["dtype"], tuple(f["shape"])) for k, f in features.items()),
                   inputs=tuple(saved["inputs"]), preprocessor_class=saved["preprocessor"],
                   vocabulary_size=int(saved["vocabulary_size"]))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.tensors)

    def record(self) -> dict[str, Any]:
        return {"x_kind": "tokens", "fields": list(self.keys.names), "label": self.label,
                "inputs": list(self.inputs), "sequence_length": self.keys.sequence_length,
                "preprocessor": self.preprocessor_class, "vocabulary_size": self.vocabulary_size}

    def features(self) -> dict:
        return {name: {"dtype": dtype, "shape": list(shape)} for name, dtype, shape in self.tensors}

    def spec(self) -> dict:
        return {name: tf.io.FixedLenFeature(shape, tf.int64) for name, _, shape in self.tensors}

    def bind(self, preprocessor: Any, flag: str, sequence_length: Optional[int] = None) -> TFRecordTokenLayout:
        """Given the model's `preprocessor`: it must be the one that wrote the shards, and
        `sequence_length` (the option) None or theirs."""
        found, written = written_by(preprocessor), (self.preprocessor_class, self.vocabulary_size)
        if found != written:
            raise DistftError(f"--{flag} holds token ids written by {_named(*written)} and the model's "
                              f"preprocessor is {_named(*found)}: train the model the shards were written "
                              "for, or shard the text again with distft shard --model=THIS_MODEL")
        if sequence_length not in (None, self.keys.sequence_length):
            raise DistftError(f"--sequence_length={sequence_length} but --{flag} holds token ids of "
                              f"{self.keys.sequence_length} tokens a record: leave --sequence_length out, or "
                              f"shard the text again with --sequence_length={sequence_length}")
        return dataclasses.replace(self, preprocessor=preprocessor)

    def without_preprocessor(self, flag: str) -> DistftError:
        return DistftError(f"--{flag} holds token ids of {_named(self.preprocessor_class, self.vocabulary_size)} "
                           "and the model has no preprocessor: use the Keras Hub task they were "
                           "written for, saved with its preprocessor")

    def decoders(self, input_shape: tuple, classes: tuple) -> tuple[Decoder, Decoder]:
        """A batch of records -> (x, y[, sample_weight]), as the preprocessor gave them."""
        dtypes = {name: tf.as_dtype(dtype) for name, dtype, _ in self.tensors}

        def batch(record: dict):
            values = {k: tf.cast(record[k], dtype) for k, dtype in dtypes.items()}
            return ({k: values[k] for k in self.inputs}, *(values[k] for k in TARGETS if k in values))

        return None, batch

    def _said(self, record: dict) -> str:
        """The text of a record's tokens (a pair's: the start token and the prompt, up to the
        first weighted target), special tokens left out."""
        ids = record["token_ids"].numpy()[record["padding_mask"].numpy().astype(bool)]
        if self.keys.paired:
            ids = ids[:int(np.argmax(record["sample_weight"].numpy())) + 1]
        tokenizer = self.preprocessor.tokenizer
        special = set(tokenizer.special_token_ids)
        text = tokenizer.detokenize(np.array([i for i in ids if i not in special], np.int32))
        return text if isinstance(text, str) else text.numpy().decode()


class Tokenizer:
    """Serialized text shard Examples (of `text`) -> serialized token-id Examples (of `layout`),
    with the model's `preprocessor` packing `sequence_length` tokens a record (None: its own),
    in tf.data as training tokenizes."""

    def __init__(self, text: TFRecordTextLayout, preprocessor: Any, sequence_length: Optional[int] = None):
        self.text = text.bind(preprocessor, "input", sequence_length)
        x, *targets = self._tokenized(tf.data.Dataset.from_tensors([b""])).element_spec
        cls, vocabulary = written_by(preprocessor)
        self.layout = TFRecordTokenLayout(
            dataclasses.replace(self.text.keys, sequence_length=self.text.packed_length),
            TARGETS[0] if self.text.label else None, preprocessor=preprocessor,
            tensors=tuple((k, v.dtype.name, tuple(v.shape[1:])) for k, v in _named_tensors(x, targets).items()),
            inputs=tuple(x), preprocessor_class=cls, vocabulary_size=vocabulary)

    def _tokenized(self, batches: tf.data.Dataset) -> tf.data.Dataset:
        """`batches` of serialized text Examples, as the preprocessor's (x, y[, sample_weight])."""
        tokenize, spec = self.text.decoders((), ())[1], self.text.spec()
        return batches.map(tf.autograph.experimental.do_not_convert(
            lambda serialized: tokenize(tf.io.parse_example(serialized, spec))))

    def __call__(self, examples: list[bytes]) -> list[bytes]:
        if not examples:
            return []
        x, *targets = next(iter(self._tokenized(tf.data.Dataset.from_tensors(tf.constant(examples)))))
        values = {k: v.numpy().astype(np.int64).reshape(len(examples), -1)
                  for k, v in _named_tensors(x, targets).items()}
        rows = ({k: tf.train.Feature(int64_list=tf.train.Int64List(value=v[i])) for k, v in values.items()}
                for i in range(len(examples)))
        # Deterministic: the same bytes (and sha256) whichever process writes them.
        return [tf.train.Example(features=tf.train.Features(feature=row)).SerializeToString(deterministic=True)
                for row in rows]


def _named_tensors(x: dict, targets: list) -> dict:
    """The preprocessor's output by stored name: its inputs, then TARGETS."""
    return {**x, **dict(zip(TARGETS, targets))}
