"""A data set on disk, made ready once by all workers together, and each worker's tf.data stream.

`Source.open` learns what the files hold (enough to prepare a model: `layout.target_shape`);
`load` matches sources to the model, counts them (all workers together) and numbers their
class names, in that one order, and returns immutable `Ready` data sets, whose methods need
nothing else first.

Example:
    source = Source.open("shards/*.tfrecord", holdout=0.1)
    train, val = load(source, model, worker)   # val: the held-out tenth
    batches = train.stream(rank, size, batch_size=32, input_shape=(8, 8, 1), training=True, seed=0)
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

import keras
import numpy as np
import tensorflow as tf

from distft import log
from distft.data import images, named, sharding
from distft.data.formats import FORMATS, UNREADABLE, XY, CsvLayout, ImageFolderLayout, Layout, Named, Text, \
    TextOptions, damaged, infer_layout, layout_type, named_layout, text_layout
from distft.data.manifest import NAME, Manifest
from distft.data.own_preprocessor import image_preprocessor, text_preprocessor
from distft.errors import DistftError

AUTOTUNE = tf.data.AUTOTUNE
HOLDOUT_BASE = 10000  # --val_split resolution: 1/10000
SLOW_LISTING = 10.0  # seconds: listing an image folder this long suggests `distft shard`


@dataclass(frozen=True)
class Counts:
    """Per-file record counts (train part and held-out part) and the label range (named
    layouts: each output's, in `ranges`)."""

    train: tuple[int, ...]
    held_out: tuple[int, ...]
    y_min: float
    y_max: float
    ranges: dict = field(default_factory=dict)  # named: {output: (lowest, highest) target}


class Workers(Protocol):
    """The workers that load a data set together (train/runtime.py's Worker is one)."""

    rank: int
    size: int

    def gather(self, obj: object) -> list: ...

    def all_ok(self, fn: Callable[[], Any]) -> Any: ...


class Alone:
    """One worker: nothing to gather."""

    rank, size = 0, 1

    def gather(self, obj: object) -> list:
        return [obj]

    def all_ok(self, fn: Callable[[], Any]) -> Any:
        return fn()


@dataclass(frozen=True, eq=False)
class Source:
    """Files of one layout (for an image folder: one file a record), opened: what a model is
    prepared for (`layout.target_shape`), not yet read in full. `load` makes it `Ready`.
    `holdout` > 0 splits off a deterministic fraction; `classes` names the class ids, when known."""

    files: tuple[str, ...]
    layout: Layout
    holdout: float = 0.0
    flag: str = "data"  # the option that named it, for errors
    label: str = "label"  # CSV: the one-input layout's label column(s)
    manifest: Optional[Manifest] = field(default=None, repr=False)
    classes: tuple[str, ...] = ()
    labels: Optional[np.ndarray] = field(default=None, repr=False)  # image folder: class ids
    located: Optional[np.ndarray] = field(default=None, repr=False)  # see Layout.locate
    text: TextOptions = TextOptions()  # where text records hold their text

    @classmethod
    def open(cls, pattern: str, label: str = "label", holdout: float = 0.0,
             x_key: Optional[str] = None, y_key: Optional[str] = None, flag: str = "data",
             named_csv: bool = False, text: TextOptions = TextOptions()) -> Source:
        """Resolve a file, folder or glob; check the files share one format and layout.

        Shards with a manifest (see data/manifest.py) take their file list, layout, class
        names and counts from it, after a cheap check of each shard's size. A folder of
        class subfolders of images is an image data set. `flag` names the option in errors.
        `named_csv` (the model is not known yet): CSV without the one-input layout (no `label`
        column, or not numeric) opens as named columns, and its error waits for `load` with a
        one-input model. `text`: where text records (.jsonl, .txt; CSV or TFRecord for a model
        that takes text) hold it.
        """
        m = Manifest.find(pattern)
        if m is not None:
            m.verify()
            return cls(tuple(m.paths()), m.to_layout(), holdout, flag, manifest=m, classes=tuple(m.class_names),
                       text=text)
        if is_image_folder(pattern):
            started = time.perf_counter()
            paths, labels, classes = images.scan(pattern, flag)
            seconds = time.perf_counter() - started
            if seconds > SLOW_LISTING:
                log.warning("listing %d images in --%s=%s took %.0fs, on every start: write "
                            "shards once with 'distft shard --input=%s --output_dir=SHARDS "
                            "--num_shards=N' and train on those", len(paths), flag, pattern,
                            seconds, pattern)
            return cls(tuple(paths), ImageFolderLayout(), holdout, flag, classes=tuple(classes),
                       labels=np.array(labels, np.int64))
        files = tuple(resolve_files(pattern, flag))
        kinds = {layout_type(f) for f in files}
        if len(kinds) > 1:
            raise DistftError(f"--{flag}={pattern} mixes formats {sorted(k.format for k in kinds)}: use one format")
        try:
            layout = infer_layout(files[0], label, x_key, y_key, text=text)
        except DistftError:
            if not (named_csv and kinds == {CsvLayout}):
                raise
            layout = named_layout(files[0])
        return cls(files, layout, holdout, flag, label, located=layout.locate(files), text=text)

    def _bound(self, model: Optional[keras.Model], targets: bool) -> Source:
        """Matched to `model`'s inputs and outputs (see data/named.py): text records to a model
        that takes text (its preprocessor's); images to a model with its own image preprocessor
        (a Keras Hub image task's, see data/own_preprocessor.py); named fields for a model with
        several inputs or outputs (`targets=False`: only the inputs are needed); distft's
        one-input layout, as opened, for other models (and None)."""
        preprocessor = text_preprocessor(model)
        layout = self.layout if isinstance(self.layout, Text) else \
            self._as_text() if preprocessor is not None else None
        if layout is not None:
            if preprocessor is None:
                raise layout.without_preprocessor(self.flag)
            layout = layout.bind(preprocessor, self.flag, self.text.sequence_length)
            return dataclasses.replace(self, layout=layout, located=None)
        is_named = isinstance(self.layout, Named)
        own = image_preprocessor(model)
        if own is not None and isinstance(self.layout, XY):
            return dataclasses.replace(self, layout=self.layout.bind(own))
        if model is None or not named.is_multi(model):
            if is_named:  # the one-input layout's own error, naming what is missing
                infer_layout(self.files[0], self.label, allow_named=False)
            return self
        if self.labels is not None:
            raise DistftError(f"--{self.flag}: a model with several inputs or outputs reads .npz arrays, "
                              "TFRecord features or CSV columns named as its inputs and outputs, not "
                              "an image folder: write the data with np.savez(path, INPUT=..., OUTPUT=...)")
        layout = self.layout if is_named else named_layout(self.files[0])
        data = self.manifest.folder if self.manifest else ",".join(self.files[:3])
        layout = layout.bind(named.model_ports(model), targets, data)
        return dataclasses.replace(self, layout=layout, located=layout.locate(self.files))

    def _as_text(self) -> Optional[Text]:
        """The text layout of CSV or TFRecord records that hold the text fields (None: they do
        not, e.g. token ids)."""
        try:
            return text_layout(self.files[0], self.text, self.label)
        except DistftError:
            return None

    def _counted(self, workers: Workers) -> Ready:
        """Count records per file; worker `rank` reads every `size`-th file, `gather` shares.

        Each worker reports its results or its error, so every worker sees a bad file at
        the same moment and they stop together instead of leaving the others waiting.
        With a manifest nothing is read: the counts are the manifest's.
        """
        part = "train" if self.holdout else "all"
        if self.manifest is not None or self.labels is not None:
            return Ready(self, self._known_counts(), part)
        mine: dict[int, tuple] = {}
        error = None
        for i in range(workers.rank, len(self.files), workers.size):
            try:
                mine[i] = self._count_file(i)
            except DistftError as e:
                error = str(e)
                break
        results = workers.gather((mine, error))
        errors = [e for _, e in results if e]
        if errors:
            raise DistftError(errors[0])
        merged: dict[int, tuple] = {}
        for found, _ in results:
            merged.update(found)
        per_file = [merged[i] for i in range(len(self.files))]
        train, held = tuple(p[0] for p in per_file), tuple(p[1] for p in per_file)
        y = [(lo, hi) for n, k, lo, hi, _ in per_file if n + k]  # lo, hi: one value per output
        layout = self.layout
        lows = [min(l[i] for l, _ in y) if y else 0.0 for i in range(layout.width)]
        highs = [max(h[i] for _, h in y) if y else 0.0 for i in range(layout.width)]
        # The class names of each target that holds names, over all files.
        found = [tuple(sorted(set().union(*(names[i] for *_, names in per_file))))
                 for i in range(len(per_file[0][4]))]
        if isinstance(layout, Named):
            ranges = {n: (lo, hi) for n, lo, hi in zip(layout.outputs, lows, highs)}
            ranges.update({n: (0.0, float(len(c) - 1)) for n, c in zip(layout.text_outputs, found)})
            layout = layout.with_classes(dict(zip(layout.text_outputs, found)))
            return Ready(dataclasses.replace(self, layout=layout), Counts(train, held, 0.0, 0.0, ranges), part)
        lo, hi, source = (lows[0], highs[0], self) if lows else (0.0, 0.0, self)
        if found:
            classes = found[0]
            lo, hi, source = 0.0, float(len(classes) - 1), dataclasses.replace(self, classes=classes)
        return Ready(source, Counts(train, held, lo, hi), part)

    def _known_counts(self) -> Counts:
        """Counts from the manifest, or an image folder's one record a file: nothing is read."""
        per_file = self.manifest.counts() if self.manifest is not None else [1] * len(self.files)
        held = tuple(_held_out_count(self.holdout, n, index) for index, n in enumerate(per_file))
        train = tuple(n - k for n, k in zip(per_file, held))
        if self.manifest is not None and isinstance(self.layout, Named):  # the shards record no target ranges
            return Counts(train, held, 0.0, 0.0)
        if self.manifest is not None:
            return Counts(train, held, *self.manifest.label_range())
        return Counts(train, held, float(self.labels.min()), float(self.labels.max()))

    def _count_file(self, index: int) -> tuple[int, int, tuple, tuple, tuple]:
        """(records, held-out records, lowest and highest target value (one per output), class
        names (per target that holds names)) of one file, after checking that it fits the layout."""
        path, layout = self.files[index], self.layout
        try:
            cheap = layout.count_cheaply(path, self.files[0])
            if cheap is not None:
                n, ys = cheap
                k = _held_out_count(self.holdout, n, index)
                return (n - k, k, tuple(float(y.min()) if n else 0.0 for y in ys),
                        tuple(float(y.max()) if n else 0.0 for y in ys), ())
            n, k, lo, hi = _counter(layout, self.holdout)(tf.constant(path), tf.constant(index, tf.int64))
            names = layout.class_names(path)
        except DistftError:
            raise
        except tf.errors.InvalidArgumentError as e:
            layout.misfit(path)  # raises for a file that reads but does not fit
            raise damaged(path, layout.format, e) from None
        except (tf.errors.OpError, *UNREADABLE) as e:
            raise damaged(path, layout.format, e) from None
        return int(n), int(k), tuple(lo.numpy().tolist()), tuple(hi.numpy().tolist()), names

    def _read(self, path: tf.Tensor, index: tf.Tensor) -> tf.data.Dataset:
        """The raw records of file `index`, given what is known of it (an image's class id)."""
        known = self.labels if self.labels is not None else self.located
        return self.layout.read(path, None if known is None else tf.gather(known, index))


Classes = Union[tuple[str, ...], dict[str, tuple]]


class Loaded(NamedTuple):
    """What `load` returns: the training data and, when there is any, the validation data."""

    train: Ready
    val: Optional[Ready]


def load(source: Source, model: Optional[keras.Model] = None, workers: Workers = Alone(),
         val: Optional[Source] = None, targets: bool = True, classes: Optional[Classes] = None,
         where: str = "") -> Loaded:
    """`source` (and `val`) made ready for `model`, by all `workers` together (each calls it).

    In this order: both are matched to the model's inputs and outputs (see `Source._bound`;
    `model` None: the one-input layout; `targets=False`: only the inputs are needed), counted
    (a collective: each worker counts its part of the files), and their class names numbered:
    the training data's as `classes` (the model's; `where` names them in errors) when given,
    `val`'s as the training data's. With a holdout the validation data is its held-out part
    (`val` is then None)."""
    bound = workers.all_ok(lambda: [s._bound(model, targets) for s in (source, val) if s])
    train = bound[0]._counted(workers)
    if classes is not None:
        train = workers.all_ok(lambda: train._numbered(classes, where))
    if source.holdout:
        return Loaded(train, dataclasses.replace(train, part="held_out"))
    if val is None:
        return Loaded(train, None)
    mine = train.output_classes or train.classes
    return Loaded(train, workers.all_ok(lambda: bound[1]._counted(workers)._numbered(mine, "--data")))


@dataclass(frozen=True, eq=False)
class Ready:
    """A data set matched to a model and counted (see `load`): its part ("all", or "train" or
    "held_out" of a holdout split) and each worker's stream of it."""

    source: Source
    counts: Counts = field(repr=False)
    part: str = "all"  # all | train | held_out (of the holdout split)

    @property
    def layout(self) -> Layout:
        return self.source.layout

    @property
    def files(self) -> tuple[str, ...]:
        return self.source.files

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of the targets' ids (image folders, CSV class names, shards)."""
        return self.source.classes

    @property
    def output_classes(self) -> dict[str, tuple]:
        """Named CSV: the class names of each output that reads them, in id order."""
        return self.layout.output_classes

    def _numbered(self, classes: Classes, where: str) -> Ready:
        """This data set with its class names numbered as `classes` (the model's, or the training
        data's; named CSV: by output, as `output_classes`) rather than by its own sorted names."""
        source = self.source
        if isinstance(classes, dict):
            mine = self.output_classes
            for name, names in classes.items():
                _known(list(mine.get(name, ())), list(names), f"{where}'s '{name}'")
            layout = self.layout.with_classes({n: classes[n] for n in mine if n in classes})
            return dataclasses.replace(self, source=dataclasses.replace(source, layout=layout))
        if not self.classes or tuple(classes) == self.classes:
            return self
        _known(list(self.classes), list(classes), where)
        labels = source.labels
        if labels is not None:
            labels = np.array([list(classes).index(self.classes[i]) for i in labels], np.int64)
        return dataclasses.replace(self, source=dataclasses.replace(source, classes=tuple(classes), labels=labels))

    def part_counts(self) -> tuple[int, ...]:
        """Records of each file in this part."""
        return self.counts.held_out if self.part == "held_out" else self.counts.train

    def share(self, rank: int, size: int, by_record: bool = False) -> sharding.Share:
        return sharding.assign(list(self.part_counts()), rank, size, by_record)

    def steps_per_epoch(self, size: int, batch_size: int) -> int:
        """Steps of one epoch on `size` workers: floor(records / (size * batch_size)), at least 1."""
        return sharding.steps_per_epoch(list(self.part_counts()), size, batch_size)
    def stream(self, rank: int, size: int, batch_size: int, input_shape: tuple,
               training: bool, seed: int = 0, shuffle_buffer: int = 10000,
               by_record: bool = False, steps: Optional[int] = None,
               epochs: Optional[tuple[int, int]] = None, skip: int = 0,
               preprocess: str = "scale", augment: tuple = (), cache: Optional[str] = None
               ) -> tf.data.Dataset:
        """Worker `rank`'s batches of (x, y).

        Training streams give `steps` batches (default: steps_per_epoch) for each epoch in
        range(*epochs) (default: epoch 0 again and again), the same number on every worker.
        Each epoch reads its records afresh: that epoch's assignment of files (which changes
        every epoch), interleaved, or with fewer files than workers every `size`-th record of
        all files read as one worker reads them, so that N workers at batch b see at each step
        the records one worker sees at batch N*b. They are shuffled in a bounded buffer seeded
        by (seed, rank, epoch), repeated if the share is short, and cut to `steps` batches. A
        resumed run passes the batches of epoch `epochs[0]` already trained as `skip`, and
        gets the batches an uninterrupted run gets from there (augmentation included). With
        `cache` ("memory" or a folder) the worker's decoded share is cached (in full, before
        the first epoch) before augmentation and stays fixed over the epochs. Evaluation
        streams are finite and keep every record of the worker's share exactly once;
        `by_record` splits records in the files' order, one file after another, so that the
        workers' records interleave back to it. Images are decoded, resized to `input_shape`,
        augmented (training only) and preprocessed record by record; bound to the model's own
        preprocessor (see `Source._bound`), they are decoded through it (`preprocess` is not
        applied) and then augmented.
        """
        image, own = self.layout.has_images, self.layout.preprocessor is not None
        if not image and (augment or preprocess not in ("scale", "none")):
            raise DistftError("--augment and --preprocess apply to image data, and --data holds "
                              "feature records: leave them out")
        if image and own and "color" in augment:
            raise DistftError("--augment=color changes pixels in [0, 255], and the model's own "
                              "preprocessor has scaled them already: use flip, crop or rotate")
        if image and not own and 0 in self.layout.pixel_scales and preprocess != "none":
            raise DistftError("--data's 'x' holds float images whose values are not pixels in "
                              "[0, 1] or [0, 255] (already normalised?): pass --preprocess=none "
                              "to feed them as they are")
        per_record, per_batch = self.layout.decoders(tuple(input_shape), tuple(self.classes))
        share = self.share(rank, size, by_record)
        steps = steps or self.steps_per_epoch(size, batch_size)
        per_epoch = functools.partial(epoch_stream, records=steps * batch_size, epochs=epochs, seed=seed,
                                      rank=rank, shuffle_buffer=shuffle_buffer, skip=skip * batch_size)
        if not training:
            ds = self._decoded(self._share_records(share, by_record), per_record)
        elif cache is not None:
            cached = self._decoded(self._share_records(share, by_record), per_record)
            cached = cached.cache(self._cache_path(cache, share, rank, input_shape))
            # One whole pass fills the cache first: TF throws away a cache that was read in part.
            ds = cached.filter(lambda *_: False).concatenate(per_epoch(lambda e: cached))
        elif share.stride > 1:
            records = self._share_records(share, by_record)
            ds = self._decoded(per_epoch(lambda e: records), per_record)
        else:
            ds = self._decoded(per_epoch(self._epoch_files(rank, size, seed, epochs)), per_record)
        if image:
            if training and augment:
                fn = images.augmenter(tuple(augment), seed)
                # A record's seed is its place in the rank's stream, so a resumed run continues them.
                first = ((epochs or (0,))[0] * steps + skip) * batch_size
                ds = ds.enumerate(first).map(
                    lambda i, r: (self.layout.on_images(r[0], lambda x: fn(x, tf.stack([tf.cast(rank, tf.int64), i]))),
                                  r[1]),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
            if not own:
                prep = images.preprocessor(preprocess)
                ds = ds.map(lambda x, y: (self.layout.on_images(x, prep), y), num_parallel_calls=AUTOTUNE,
                            deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=training)
        if per_batch is not None:
            # Plain TF ops: autograph's conversion would add seconds to every start.
            ds = ds.map(tf.autograph.experimental.do_not_convert(per_batch), num_parallel_calls=AUTOTUNE,
                        deterministic=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(AUTOTUNE)

    def _records(self, path: tf.Tensor, index: tf.Tensor) -> tf.data.Dataset:
        """The raw records of this part of file `index`."""
        if self.part == "all":  # no holdout: no per-record tagging on the hot path
            return self.source._read(path, index)
        want = self.part == "held_out"
        return _tagged(self.source._read(path, index), self.source.holdout, index).filter(
            lambda held, _: tf.equal(held, want)).map(lambda _, record: record)

    def _share_records(self, share: sharding.Share, in_file_order: bool = False) -> tf.data.Dataset:
        """The raw records of a share, once: its files interleaved (`in_file_order`: one after
        another), then every stride-th record."""
        paths = tf.constant([self.files[i] for i in share.files] or [""], tf.string)
        idx = tf.constant(list(share.files) or [0], tf.int64)
        files = tf.data.Dataset.from_tensor_slices((paths, idx)).take(len(share.files))
        if in_file_order:
            records = files.flat_map(tf.autograph.experimental.do_not_convert(self._records))
        else:
            records = self._interleaved(files, len(share.files))
        return records.shard(share.stride, share.offset)

    def _interleaved(self, files: tf.data.Dataset, n: int) -> tf.data.Dataset:
        """The raw records of `n` (path, index) `files`, read a few files at a time, in a fixed order."""
        return files.interleave(tf.autograph.experimental.do_not_convert(self._records),
                                cycle_length=min(4, max(1, n)), num_parallel_calls=AUTOTUNE,
                                deterministic=True)

    def _epoch_files(self, rank: int, size: int, seed: int, epochs: Optional[tuple[int, int]]
                     ) -> Callable[[Union[int, tf.Tensor]], tf.data.Dataset]:
        """For epoch e in range(*epochs) (a number or a traced scalar): the raw records of worker
        `rank`'s files in epoch e, once."""
        first, last = epochs or (0, 1)
        shares = [sharding.assign(list(self.part_counts()), rank, size, epoch=e, seed=seed).files
                  for e in range(first, last)]
        most = max(len(f) for f in shares)  # one cycle length for every epoch
        # Each epoch's files as a row of a table (padded with -1), so that a traced epoch picks its own.
        table = tf.constant([list(f) + [-1] * (most - len(f)) for f in shares], tf.int64)
        paths = tf.constant(self.files, tf.string)

        def epoch(e: Union[int, tf.Tensor]) -> tf.data.Dataset:
            row = tf.gather(table, tf.cast(e, tf.int64) - first)
            idx = tf.boolean_mask(row, row >= 0)
            return self._interleaved(tf.data.Dataset.from_tensor_slices((tf.gather(paths, idx), idx)), most)

        return epoch

    @staticmethod
    def _decoded(records: tf.data.Dataset, decode: Optional[Callable]) -> tf.data.Dataset:
        """`records` decoded one by one (see Layout.decoders), or unchanged without `decode`."""
        if decode is None:
            return records
        return records.map(tf.autograph.experimental.do_not_convert(decode),
                           num_parallel_calls=AUTOTUNE, deterministic=True)

    def _cache_path(self, cache: str, share: sharding.Share, rank: int, input_shape: tuple) -> str:
        """"" (memory) or a file in the folder `cache`, named for what it holds."""
        if cache == "memory":
            return ""
        import hashlib

        key = repr((list(self.files), share, self.part, self.source.holdout, tuple(input_shape)))
        os.makedirs(cache, exist_ok=True)
        return os.path.join(cache, f"distft-{hashlib.sha256(key.encode()).hexdigest()[:16]}-rank{rank}")


def _known(names: list[str], classes: list[str], where: str) -> None:
    """The class names `names` must all be in `classes`."""
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DistftError(f"the data has classes {', '.join(unknown[:5])} that {where} does not "
                          f"have ({', '.join(classes[:10])}): use data of the same classes")


def epoch_stream(source: Callable[[Union[int, tf.Tensor]], tf.data.Dataset], records: int,
                 epochs: Optional[tuple[int, int]], seed: int, rank: int, shuffle_buffer: int,
                 skip: int = 0) -> tf.data.Dataset:
    """`records` records for each epoch e in range(*epochs) (default: epoch 0 again and
    again): `source(e)` shuffled with a seed of (seed, rank, e), so that no epoch's order
    depends on the epochs before it, repeated as needed; the first `skip` records left out.

    The epochs are one `flat_map` over the epoch numbers: a pipeline built once, whatever the
    number of epochs (built epoch by epoch in Python, 500 epochs took 10 s at start). A shuffle
    seed computed from the traced epoch number fails in TensorFlow when the global seed is 0
    (`tf.random.set_seed(0)`: its `get_seed` compares the seed in Python), so there each epoch
    is built in Python with its seed a number, and the epochs concatenated."""
    base = (seed * 1000003 + rank) * 1000003 % (1 << 31)

    def epoch(e: Union[int, tf.Tensor]) -> tf.data.Dataset:
        ds = source(e)
        if shuffle_buffer > 1:
            ds = ds.shuffle(shuffle_buffer, seed=(base + e) % (1 << 31))
        return ds.repeat().take(records)

    if not epochs:
        return epoch(0).repeat().skip(skip)
    if shuffle_buffer > 1 and _global_seed_is_zero():
        return _concatenated([epoch(e) for e in range(*epochs)]).skip(skip)
    return tf.data.Dataset.range(*epochs).flat_map(epoch).skip(skip)


def _global_seed_is_zero() -> bool:
    """Whether TensorFlow's global seed is set and truncates to 0 (see epoch_stream)."""
    from tensorflow.python.eager import context
    from tensorflow.python.framework import random_seed

    seed = context.global_seed() if tf.executing_eagerly() else tf.compat.v1.get_default_graph().seed
    return seed is not None and random_seed._truncate_seed(seed) == 0


def _concatenated(parts: list[tf.data.Dataset]) -> tf.data.Dataset:
    """`parts` one after another, nested as a balanced tree (depth log2 of their number)."""
    if len(parts) == 1:
        return parts[0]
    half = len(parts) // 2
    return _concatenated(parts[:half]).concatenate(_concatenated(parts[half:]))


def is_image_folder(pattern: str) -> bool:
    """A folder with no data files and no manifest, but subfolders (of class images)."""
    if not os.path.isdir(pattern):
        return False
    entries = os.listdir(pattern)
    return not any(os.path.splitext(f)[1].lower() in FORMATS or f == NAME for f in entries) and \
        any(os.path.isdir(os.path.join(pattern, f)) for f in entries)


def resolve_files(pattern: str, flag: str = "data") -> list[str]:
    """A file, a folder (its data files), or a glob; sorted; error if nothing matches."""
    if os.path.isdir(pattern):
        files = [os.path.join(pattern, f) for f in os.listdir(pattern)
                 if os.path.splitext(f)[1].lower() in FORMATS]
    else:
        files = glob.glob(os.path.expanduser(pattern))
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise DistftError(f"--{flag}={pattern} matches no data file: pass .tfrecord, .npz or .csv "
                          "files (quote globs so the shell does not expand them), or a folder of "
                          "class subfolders of images")
    return files


def _held_out_count(holdout: float, n: int, index: int) -> int:
    """How many of file `index`'s `n` records the holdout tags (the same tags as _tagged)."""
    fraction = int(round(holdout * HOLDOUT_BASE))
    k = 0
    for start in range(0, n if fraction else 0, 1 << 20):
        i = np.arange(start, min(n, start + (1 << 20)), dtype=np.int64)
        k += int(np.count_nonzero((i * 7919 + index * 104729) % HOLDOUT_BASE < fraction))
    return k


def _tagged(records: tf.data.Dataset, holdout: float, index: tf.Tensor) -> tf.data.Dataset:
    """(is_held_out, record) for each of one file's `records`."""
    fraction = int(round(holdout * HOLDOUT_BASE))

    @tf.autograph.experimental.do_not_convert
    def tag(i, record):
        # A stride coprime with the base spreads the held-out records evenly.
        bucket = tf.math.floormod(i * 7919 + index * 104729, HOLDOUT_BASE)
        return bucket < fraction, record

    return records.enumerate().map(tag)


@functools.lru_cache(maxsize=None)
def _counter(layout: Layout, holdout: float) -> Callable:
    """(records, held-out records, lowest label, highest label) of one file, as a function
    traced once and run for every file (tracing it per file cost ~0.5 s a file)."""
    width = layout.width

    @tf.autograph.experimental.do_not_convert  # plain TF ops: converting costs seconds
    def step(acc, item):
        n, k, lo, hi = acc
        held, record = item
        if width:
            low, high = layout.bounds(record)
            lo, hi = tf.minimum(lo, low), tf.maximum(hi, high)
        return n + tf.cast(~held, tf.int64), k + tf.cast(held, tf.int64), lo, hi

    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)],
                 autograph=False)
    def count(path, index):
        init = (tf.constant(0, tf.int64), tf.constant(0, tf.int64),
                tf.fill([width], float("inf")), tf.fill([width], float("-inf")))
        return _tagged(layout.read(path), holdout, index).reduce(init, step)

    return count
