"""Raw text records: a text a record, or a prompt and its response (and, for a text classifier,
a class id), which the model's own preprocessor (a Keras Hub task's tokenizer and packer) turns
into its inputs, targets and token weights, a batch at a time, on each worker.

Files: JSONL (`{"text": ...}` a line), `.txt` (one text a line), a CSV text column, or TFRecord
string features. Prompt/response pairs train on the response's tokens only, as Keras Hub's
causal-LM preprocessors that take pairs (Gemma 3's) mask them.

Example:
    layout = text_layout("train.jsonl", TextOptions(prompt="question", response="answer"))
    layout = layout.bind(model.preprocessor, flag="data")
    per_record, per_batch = layout.decoders((), ())   # per_batch: strings -> (x, y, weights)
"""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow as tf

from distft.data.formats.base import Decoder, Layout
from distft.data.formats.tfrecord import _TFRecordFile, _first_features
from distft.data.text_options import TextOptions
from distft.errors import DistftError


def is_causal_lm(preprocessor: Any) -> bool:
    """A causal LM's preprocessor: (token ids, next tokens, a weight per token) from text."""
    return any(c.__name__ == "CausalLMPreprocessor" for c in type(preprocessor).__mro__)


@dataclass(frozen=True)
class Text(Layout):
    """Text records, as dicts of their `keys.names` (strings) and, with a `label` field, a class
    id; `bind` gives them the model's preprocessor."""

    keys: TextOptions = TextOptions()
    label: Optional[str] = None  # a text classifier's class-id field (None for a causal LM)
    preprocessor: Any = field(default=None, compare=False, repr=False)  # bound: the model's

    has_images = False
    pixel_scales = ()
    target_shape = y_shape = ()  # class ids: a label, or (causal LM) each position's next token
    y_float = False

    @property
    def width(self) -> int:
        return 1 if self.label else 0

    @property
    def token_weighted(self) -> bool:  # type: ignore[override]
        """Targets are tokens weighted by the preprocessor (padding and prompts weigh 0): the
        loss is their mean over the real tokens of every worker (train/step.py)."""
        return self.preprocessor is not None and is_causal_lm(self.preprocessor)

    @property
    def fields(self) -> tuple[str, ...]:
        return self.keys.names + ((self.label,) if self.label else ())

    def describe_y(self) -> str:
        return "(N,)" if self.label else "tokens"

    def bind(self, preprocessor: Any, flag: str, sequence_length: Optional[int] = None) -> Text:
        """Given the model's `preprocessor` (and `sequence_length`, its override): a causal LM's
        trains on the text alone; any other (a classifier's) needs the class ids in `label`."""
        if sequence_length != self.keys.sequence_length:
            return dataclasses.replace(self, keys=dataclasses.replace(self.keys, sequence_length=sequence_length)
                                       ).bind(preprocessor, flag, sequence_length)
        if is_causal_lm(preprocessor):
            return dataclasses.replace(self, label=None, preprocessor=preprocessor)
        if self.keys.paired:
            raise DistftError(f"--{flag}: --prompt_key/--response_key are for causal language "
                              f"models, and the model's preprocessor is a {type(preprocessor).__name__}: "
                              "leave them out")
        if not self.label:
            raise DistftError(f"--{flag}: the model classifies text ({type(preprocessor).__name__}) "
                              "and the records have no class ids: add a field of class ids and "
                              "name it with --label")
        return dataclasses.replace(self, preprocessor=preprocessor)

    def without_preprocessor(self, flag: str) -> DistftError:
        """The error for a model without a preprocessor."""
        return DistftError(f"--{flag} holds text and the model has no preprocessor to tokenize it: "
                           "use a Keras Hub task saved with its preprocessor, or token ids")

    def bounds(self, record) -> tuple[tf.Tensor, tf.Tensor]:
        y = tf.cast(record[self.label], tf.float32)
        return y[None], y[None]

    def decoders(self, input_shape: tuple, classes: tuple) -> tuple[Decoder, Decoder]:
        """A batch of records -> the preprocessor's (x, y, sample_weight)."""
        if self.preprocessor is None:
            raise DistftError("--data holds text and the model has no preprocessor to tokenize it: "
                              "use a Keras Hub task saved with its preprocessor")
        preprocessor, length = self.preprocessor, self.keys.sequence_length
        if self.label and length:  # a classifier's preprocessor takes its length from itself
            preprocessor.sequence_length = length

        def batch(record: dict):
            if self.label:
                return preprocessor(record[self.keys.text], y=record[self.label])
            if self.keys.paired:
                return _prompted(preprocessor, record[self.keys.prompt], record[self.keys.response],
                                 length or preprocessor.sequence_length)
            return preprocessor(record[self.keys.text], sequence_length=length)

        return None, batch

    def on_images(self, x, fn):
        return x

    @property
    def packed_length(self) -> int:
        """Tokens a record: `--sequence_length`, else the bound preprocessor's."""
        return self.keys.sequence_length or self.preprocessor.sequence_length

    def prompts(self, path: str, n: int = -1, whole: bool = False) -> list[str]:
        """The first `n` records' prompts (-1: all), to see what a causal LM makes of them: a
        pair's prompt, or a text (`whole`), or the first half of its words."""
        found = []
        for record in self.read(tf.constant(path)).take(n):
            text = self._said(record)
            words = text.split()
            found.append(text if whole or self.keys.paired else " ".join(words[:max(1, len(words) // 2)]))
        return found

    def _said(self, record: dict) -> str:
        """A record's prompt (a pair's), or its whole text."""
        return record[self.keys.prompt if self.keys.paired else self.keys.text].numpy().decode()

    def record(self) -> dict[str, Any]:
        """What the manifest records of shards of this layout (schema["record"])."""
        return {"x_kind": "text", "fields": list(self.keys.names), "label": self.label}

    def shards(self) -> Layout:
        return TFRecordTextLayout(dataclasses.replace(self.keys, sequence_length=None), self.label)

    def examples(self, path: str, classes: list, chunk: int) -> Iterator[tuple[list[bytes], np.ndarray]]:
        shards = self.shards()
        for batch in self.read(tf.constant(path)).batch(chunk):
            n = len(batch[self.keys.names[0]])
            labels = batch[self.label].numpy() if self.label else np.zeros(n, np.int64)
            rows = [{k: batch[k][i].numpy() for k in self.keys.names} for i in range(n)]
            yield [shards.example(row, labels[i] if self.label else None) for i, row in enumerate(rows)], labels

    def _records(self, rows: tf.data.Dataset) -> tf.data.Dataset:
        """`rows` of a tuple of strings (the fields in order; the label as text) as records."""
        def record(*values):
            found = dict(zip(self.fields, values))
            if self.label:
                found[self.label] = tf.strings.to_number(found[self.label], tf.int64)
            return found

        return rows.map(record)

    def _missing(self, path: str, found: set, where: str) -> Optional[DistftError]:
        missing = [k for k in self.fields if k not in found]
        if not missing:
            return None
        named = ", ".join(f"'{k}'" for k in missing)
        return DistftError(f"{path}: {where} has no {named} (it has {', '.join(sorted(found)) or 'nothing'}): "
                           f"name the text with {self.keys.flags()}")


@dataclass(frozen=True)
class JsonlTextLayout(Text):
    """JSON Lines: an object a line, with the text (or prompt and response) as strings."""

    format = "jsonl"

    @classmethod
    def infer_text(cls, path: str, keys: TextOptions, label: Optional[str]) -> JsonlTextLayout:
        first = next(_json_rows(path), None)
        if first is None:
            raise DistftError(f"{path}: JSONL file has no records: remove it or regenerate it")
        layout = cls(keys, label if label in first[1] else None)
        error = layout._missing(path, set(first[1]), f"line {first[0]}")
        if error:
            raise error
        return layout

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        fields = self.fields

        def parse(line: tf.Tensor) -> list:
            row = json.loads(line.numpy())
            return [str(row[k]).encode() for k in fields]

        def strings(line: tf.Tensor) -> tuple:
            values = tf.py_function(parse, [line], [tf.string] * len(fields))
            for v in values:
                v.set_shape([])
            return tuple(values)

        lines = tf.data.TextLineDataset(path, buffer_size=1 << 20).filter(
            lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
        return self._records(lines.map(strings))

    def count(self, path: str) -> int:
        return sum(1 for _ in _json_rows(path))

    def misfit(self, path: str) -> None:
        for n, row in _json_rows(path):
            error = self._missing(path, set(row), f"line {n}")
            if error:
                raise error
            if self.label and not isinstance(row[self.label], int):
                raise DistftError(f"{path}: line {n}'s '{self.label}' is {row[self.label]!r}, not a "
                                  "class id: write class ids 0, 1, ... as numbers")


def _json_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-empty line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DistftError(f"{path}: line {n} is not JSON ({e.msg}): write one JSON object a line") from None
            if not isinstance(row, dict):
                raise DistftError(f"{path}: line {n} is not a JSON object: write one object a line, "
                                  'e.g. {"text": "..."}')
            yield n, row


@dataclass(frozen=True)
class TxtLayout(Text):
    """Plain text: one example a line (empty lines skipped)."""

    format = "txt"

    @classmethod
    def infer_text(cls, path: str, keys: TextOptions, label: Optional[str]) -> TxtLayout:
        if keys.paired:
            raise DistftError(f"{path}: a .txt file holds one text a line, not prompts and responses: "
                              "write JSONL with a prompt and a response field")
        return cls(TextOptions(keys.text, sequence_length=keys.sequence_length))

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        lines = tf.data.TextLineDataset(path, buffer_size=1 << 20).filter(
            lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
        return self._records(lines)

    def count(self, path: str) -> int:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())


@dataclass(frozen=True)
class CsvTextLayout(Text):
    """A CSV file with a header: the text column(s), and a class-id column for a classifier."""

    format = "csv"
    columns: tuple = ()  # the header, as read

    @classmethod
    def infer_text(cls, path: str, keys: TextOptions, label: Optional[str]) -> CsvTextLayout:
        with open(path, newline="", encoding="utf-8") as f:
            header = tuple(next(csv.reader(f), ()))
        layout = cls(keys, label if label in header else None, columns=header)
        error = layout._missing(path, set(header), "the header")
        if error:
            raise error
        return layout

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        order = sorted(self.fields, key=self.columns.index)  # CsvDataset gives columns in file order
        rows = tf.data.experimental.CsvDataset(path, [tf.string] * len(order), header=True,
                                               select_cols=[self.columns.index(k) for k in order])
        return self._records(rows.map(lambda *v: tuple(dict(zip(order, v))[k] for k in self.fields)))

    def count(self, path: str) -> int:
        with open(path, newline="", encoding="utf-8") as f:
            return sum(1 for row in csv.reader(f) if row) - 1


@dataclass(frozen=True)
class TFRecordTextLayout(_TFRecordFile, Text):
    """TFRecord Examples with the text (or prompt and response) as bytes features, and an int64
    class id for a classifier; what `distft shard` writes of any text layout."""

    compression: str = ""

    @classmethod
    def infer_text(cls, path: str, keys: TextOptions, label: Optional[str]) -> TFRecordTextLayout:
        compression, feats = _first_features(path)
        layout = cls(keys, label if label in feats else None, compression=compression)
        error = layout._missing(path, set(feats), "the first record")
        if error:
            raise error
        return layout

    @property
    def reads(self) -> str:
        return ", ".join(self.fields)

    def spec(self) -> dict:
        spec = {k: tf.io.FixedLenFeature([], tf.string) for k in self.keys.names}
        if self.label:
            spec[self.label] = tf.io.FixedLenFeature([], tf.int64)
        return spec

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        return super().read(path).map(lambda r: tf.io.parse_single_example(r, self.spec()))

    def labels(self, batch: tf.Tensor) -> np.ndarray:
        if not self.label:
            return np.zeros(len(batch), np.int64)
        return tf.io.parse_example(batch, {self.label: self.spec()[self.label]})[self.label].numpy()

    def check_example(self, record: bytes) -> Optional[str]:
        feats = tf.train.Example.FromString(record).features.feature
        for key in self.fields:
            kind = feats[key].WhichOneof("kind") if key in feats else None
            want = "int64_list" if key == self.label else "bytes_list"
            if kind != want:
                return f"has no {want} feature '{key}'"
        return None

    def example(self, row: dict, label: Optional[int]) -> bytes:
        f = tf.train.Feature
        feats = {k: f(bytes_list=tf.train.BytesList(value=[v])) for k, v in row.items()}
        if label is not None:
            feats[self.label] = f(int64_list=tf.train.Int64List(value=[int(label)]))
        return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()

    def features(self) -> dict:
        """The records' features, for the manifest: {name: {dtype, shape}}."""
        found = {k: {"dtype": "string", "shape": []} for k in self.keys.names}
        if self.label:
            found[self.label] = {"dtype": "int64", "shape": []}
        return found


TEXT_FORMATS = {"jsonl": JsonlTextLayout, "txt": TxtLayout, "csv": CsvTextLayout, "tfrecord": TFRecordTextLayout}


def _prompted(preprocessor: Any, prompts: tf.Tensor, responses: tf.Tensor, length: int):
    """(x, y, sample_weight) of prompt/response pairs, as `preprocessor` packs a text (start
    token, tokens, end token, padding to `length` + 1, shifted by one for the next-token
    targets), with the weights of the prompt's tokens 0: only the response is learnt."""
    if not preprocessor.built:  # its packer is made when it is built
        preprocessor.build(None)
    tokenizer, packer = preprocessor.tokenizer, preprocessor.packer
    prompt, response = tokenizer(prompts), tokenizer(responses)
    start = int(bool(preprocessor.add_start_token))
    token_ids, padding_mask = packer(tf.concat([prompt, response], axis=1), sequence_length=length + 1,
                                     add_start_value=preprocessor.add_start_token,
                                     add_end_value=preprocessor.add_end_token)
    # Position i of the packed sequence is a response token (or the end token) when it lies past
    # the start token and the prompt.
    first_response = start + tf.cast(prompt.row_lengths(), tf.int32)
    positions = tf.range(length + 1)[None, :]
    learnt = (positions >= first_response[:, None]) & tf.cast(padding_mask, tf.bool)
    x = {"token_ids": token_ids[..., :-1], "padding_mask": padding_mask[..., :-1]}
    return x, token_ids[..., 1:], tf.cast(learnt[..., 1:], padding_mask.dtype)
