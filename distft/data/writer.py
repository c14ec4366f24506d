"""`distft shard`: write K balanced TFRecord shards and their manifest, streaming.

Record at position i of the source goes to shard permute(i) % K, where `permute` is a
seeded bijection of [0, N) computed on the fly (a Feistel network with cycle walking): shard
sizes differ by at most one record and memory does not grow with N. Within a shard, records
pass through a seeded shuffle buffer bounded in bytes. Image folders are read in a seeded
shuffled order of their paths (the only list that grows with N: one path per image).

Each of `workers` processes reads the source and writes the shards s with s % workers == its
index, each to a temporary file renamed when complete. The parent shows progress and writes
manifest.json last, atomically, so an interrupted run never leaves a manifest.

Example:
    write("flowers/", "shards/", num_shards=8, compression="GZIP", workers=2)
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import random
import sys
import time
import traceback
from typing import Any, Callable, Iterator, Optional

import numpy as np

from distft import log
from distft.data import images, manifest
from distft.data.formats import FORMATS, Layout, TextOptions, TFRecordLayout, TFRecordTextLayout, \
    TFRecordTokenLayout, Tokenizer, infer_layout, layout_type, text_layout
from distft.data.formats.text import TEXT_FORMATS
from distft.data.manifest import NAME, Manifest, sha256
from distft.errors import DistftError

CHUNK = 1024  # records per read
BUFFER_BYTES = 64 << 20  # shuffle buffer per writing process, split among its shards
COMPRESSIONS = ("", "GZIP")


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}.tfrecord"


def permute(positions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded bijection of [0, n), applied elementwise (4-round Feistel, cycle walking)."""
    bits = max(2, (n - 1).bit_length())
    half = (bits + 1) // 2
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng(seed).integers(0, 1 << 32, 4, dtype=np.uint64)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            mixed = ((right ^ k) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(29)
            left, right = right, left ^ (mixed & mask)
        return (left << np.uint64(half)) | right

    out = feistel(np.asarray(positions, np.uint64))
    outside = out >= n
    while outside.any():  # walk the cycle back into [0, n): still a bijection of [0, n)
        out[outside] = feistel(out[outside])
        outside = out >= n
    return out.astype(np.int64)


# --- sources: count cheaply, then read kept positions in order -----------------------------

class Source:
    """Records of the input, by position: `count()`, then `read(keep)` in position order."""

    description = ""
    class_names: list[str] = []
    shard_layout: Layout  # the layout of the shards' records

    def count(self) -> int:
        raise NotImplementedError

    def read(self, keep: Callable[[np.ndarray], np.ndarray]) -> Iterator[tuple[np.ndarray, list, np.ndarray]]:
        """(positions, serialized Examples, labels) of the positions `keep` marks, chunk by chunk."""
        raise NotImplementedError


class ImageFolder(Source):
    """One subfolder per class of JPEG/PNG files, in a seeded shuffled order."""

    shard_layout = TFRecordLayout("image", x_key="image")

    def __init__(self, folder: str, seed: int):
        paths, labels, self.class_names = images.scan(folder)
        order = list(range(len(paths)))
        random.Random(seed).shuffle(order)
        self.paths = [paths[i] for i in order]
        self.labels = np.array([labels[i] for i in order], np.int64)
        self.description = f"image folder {folder} ({len(self.class_names)} classes)"

    def count(self) -> int:
        return len(self.paths)

    def read(self, keep):
        for start in range(0, len(self.paths), CHUNK):
            pos = np.arange(start, min(start + CHUNK, len(self.paths)))
            pos = pos[keep(pos)]
            examples = []
            for p in pos:
                with open(self.paths[p], "rb") as f:
                    examples.append(self.shard_layout.example(f.read(), self.labels[p]))
            yield pos, examples, self.labels[pos]


class Files(Source):
    """TFRecord, .npz or .csv files, their records concatenated in file order. TFRecords are
    kept as they are; .npz and CSV rows become `x` floats, or `x` raw uint8 pixels for uint8
    image arrays (see benchmarks/layouts.py, part 3, for why not PNG), and `y` (class names: ids)."""

    def __init__(self, files: list[str], label: str, x_key: Optional[str] = None,
                 y_key: Optional[str] = None, layout: Optional[Layout] = None,
                 text: TextOptions = TextOptions()):
        self.files, self.label = files, label
        self.layout = layout or infer_layout(files[0], label, x_key, y_key, text=text)
        self.shard_layout = self.layout.shards()
        self.description = f"{len(files)} {self.layout.format} file(s) from {os.path.dirname(files[0])}"
        self.class_names = sorted({n for f in files for names in self.layout.class_names(f) for n in names})

    def count(self) -> int:
        return sum(self.file_counts())

    def file_counts(self) -> list[int]:
        if not hasattr(self, "_counts"):
            self._counts = [self.layout.count(f) for f in self.files]
        return self._counts

    def read(self, keep):
        start = 0
        for path in self.files:
            for examples, labels in self.layout.examples(path, self.class_names, CHUNK):
                pos = np.arange(start, start + len(labels))
                start += len(labels)
                kept = keep(pos)
                yield pos[kept], [e for e, k in zip(examples, kept) if k], labels[kept]


class Tokenized(Source):
    """The text records of `text` as token ids (see data/formats/tokens.py): each chunk's kept
    records tokenized by the model's `preprocessor`, `sequence_length` tokens a record (None:
    the preprocessor's)."""

    def __init__(self, text: Source, preprocessor: Any, sequence_length: Optional[int]):
        layout = text.shard_layout
        if not isinstance(layout, TFRecordTextLayout) or isinstance(layout, TFRecordTokenLayout):
            what = "token ids already" if isinstance(layout, TFRecordTokenLayout) else "no text"
            raise DistftError(f"--model tokenizes text and --input holds {what}: leave --model out")
        self.text, self.tokenizer = text, Tokenizer(layout, preprocessor, sequence_length)
        self.shard_layout, self.class_names = self.tokenizer.layout, text.class_names
        self.description = (f"{text.description} as token ids of {self.shard_layout.preprocessor_class}, "
                            f"{self.shard_layout.keys.sequence_length} a record")

    def count(self) -> int:
        return self.text.count()

    def read(self, keep):
        for pos, examples, labels in self.text.read(keep):
            yield pos, self.tokenizer(examples), labels


def open_source(path: str, label: str, seed: int, x_key: Optional[str] = None,
                y_key: Optional[str] = None, text: TextOptions = TextOptions(),
                preprocessor: Any = None) -> Source:
    """An image folder (class subfolders), or a file, folder or glob of TFRecord/.npz/.csv, or
    of text (.jsonl, .txt: where `text` says); with a model's `preprocessor`, text (CSV and
    TFRecord too) as token ids."""
    source = _open_source(path, label, seed, x_key, y_key, text, preprocessor is not None)
    return source if preprocessor is None else Tokenized(source, preprocessor, text.sequence_length)


def _open_source(path: str, label: str, seed: int, x_key: Optional[str], y_key: Optional[str],
                 text: TextOptions, as_text: bool) -> Source:
    """`open_source`'s records as they are (`as_text`: a CSV or TFRecord file's text fields)."""
    from distft.data.dataset import resolve_files

    if os.path.isdir(path) and not any(os.path.splitext(f)[1].lower() in FORMATS
                                       for f in os.listdir(path)):
        return ImageFolder(path, seed)
    try:
        files = resolve_files(path)
    except DistftError:
        raise DistftError(f"--input={path} matches no data file: pass an image folder (one "
                          "subfolder per class), or TFRecord, .npz or .csv files") from None
    files = [f for f in files if os.path.basename(f) != NAME]
    formats = {layout_type(f).format for f in files}
    if len(formats) > 1:
        raise DistftError(f"--input={path} mixes formats {sorted(formats)}: use one format")
    previous = Manifest.find(path)  # re-sharding shards keeps their layout and class names
    if previous is not None:
        source = Files(files, label, layout=previous.to_layout())
        source.class_names = previous.class_names
        return source
    if as_text and layout_type(files[0]).format in TEXT_FORMATS:  # CSV and TFRecord too
        return Files(files, label, layout=text_layout(files[0], text, label))
    return Files(files, label, x_key, y_key, text=text)


# --- writing ----------------------------------------------------------------------------------

def write(input: str, output_dir: str, num_shards: int, compression: str = "", label: str = "label",
          seed: int = 0, workers: int = 1, overwrite: bool = False, x_key: Optional[str] = None,
          y_key: Optional[str] = None, text: TextOptions = TextOptions(), preprocessor: Any = None) -> Manifest:
    """Write `num_shards` balanced shards of `input` and their manifest into `output_dir`; with
    a model's `preprocessor`, text as its token ids (see open_source)."""
    compression = (compression or "").upper().replace("NONE", "")
    if compression not in COMPRESSIONS:
        raise DistftError(f"--compression={compression} is not one of GZIP or none")
    if num_shards < 1 or workers < 1:
        raise DistftError(f"--num_shards and --workers must be at least 1, got {num_shards} and {workers}")
    _check_output(output_dir, overwrite)
    started = time.time()
    source = open_source(input, label, seed, x_key, y_key, text, preprocessor)
    total = source.count()
    if total < num_shards:
        raise DistftError(f"--input has {total} records for --num_shards={num_shards}: ask for "
                          "at most as many shards as records")
    _clear(output_dir)
    log.info("sharding %s: %d records into %d shards with %d process(es)", source.description,
             total, num_shards, min(workers, num_shards))
    shards, y_range = _run_workers(source, total, output_dir, num_shards, compression, seed,
                                   min(workers, num_shards))
    m = Manifest(shards=shards, schema={"features": source.shard_layout.features(),
                                        "record": manifest.record(source.shard_layout),
                                        "y_min": y_range[0], "y_max": y_range[1]},
                 class_names=list(source.class_names), source=os.path.abspath(input),
                 compression=compression, seed=seed, folder=output_dir)
    m.save(output_dir)
    size = sum(s["bytes"] for s in shards)
    log.info("wrote %d shards (%d to %d records, %.1f MB) and %s to %s in %.1fs", num_shards,
             min(m.counts()), max(m.counts()), size / 1e6, NAME, output_dir, time.time() - started)
    return m


def _check_output(folder: str, overwrite: bool) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DistftError(f"--output_dir={folder} is a file: pass a folder path")
    if overwrite or not os.path.isdir(folder):
        return
    if os.path.exists(os.path.join(folder, NAME)):
        raise DistftError(f"--output_dir={folder} already holds shards and {NAME}: pass "
                          "--overwrite to replace them, or choose another folder")
    if any(f.startswith("shard-") for f in os.listdir(folder)):
        raise DistftError(f"--output_dir={folder} holds shard files of an unfinished run: pass "
                          "--overwrite to replace them")


def _clear(folder: str) -> None:
    """Remove a previous manifest first (so no manifest can list new, unfinished shards),
    then old shards and temporary files."""
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, NAME)):
        os.remove(os.path.join(folder, NAME))
    for f in os.listdir(folder):
        if f.startswith(("shard-", ".shard-")):
            os.remove(os.path.join(folder, f))


def _run_workers(source: Source, total: int, folder: str, num_shards: int, compression: str,
                 seed: int, workers: int) -> tuple[list[dict], tuple[float, float]]:
    ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    messages = ctx.Queue()
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(source, total, folder, num_shards, compression, seed, w, workers,
                               messages, os.getpid()))
             for w in range(workers)]
    for p in procs:
        p.start()
    bar = _Progress(total)
    shards: list[dict] = []
    lows, highs = [], []
    done = 0
    try:
        while done < workers:
            try:
                kind, value = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise DistftError(f"a shard writer died (exit code {dead[0].exitcode}): no "
                                      "manifest written; rerun with --overwrite") from None
                continue
            if kind == "records":
                bar.add(value)
            elif kind == "error":
                raise DistftError(value)
            else:
                done += 1
                shards += value[0]
                if value[1] is not None:
                    lows.append(value[1][0])
                    highs.append(value[1][1])
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        for f in os.listdir(folder):  # temporary files of writers stopped early
            if f.startswith(".shard-"):
                os.remove(os.path.join(folder, f))
    bar.finish()
    shards.sort(key=lambda s: s["file"])
    return shards, (min(lows) if lows else 0.0, max(highs) if highs else 0.0)


def _worker(source: Source, total: int, folder: str, num_shards: int, compression: str, seed: int,
            index: int, workers: int, messages, parent: int) -> None:
    """Write shards index, index + workers, ...; report progress, then the shards' entries."""
    from distft import log as logs

    logs.quiet_tensorflow()
    tmp_paths: dict[int, str] = {}
    try:
        import tensorflow as tf

        mine = list(range(index, num_shards, workers))
        tmp_paths = {s: os.path.join(folder, f".{shard_name(s, num_shards)}.tmp-{os.getpid()}")
                     for s in mine}
        options = tf.io.TFRecordOptions(compression_type=compression)
        writers = {s: tf.io.TFRecordWriter(tmp_paths[s], options) for s in mine}
        buffers = {s: _ShuffleBuffer(BUFFER_BYTES // len(mine), seed * 1000003 + s) for s in mine}
        counts = dict.fromkeys(mine, 0)
        low, high = float("inf"), float("-inf")

        def keep(pos: np.ndarray) -> np.ndarray:
            return permute(pos, total, seed) % num_shards % workers == index

        for pos, examples, labels in source.read(keep):
            if os.getppid() != parent:  # the parent was killed: stop (removing the temporary files)
                sys.exit(1)
            targets = permute(pos, total, seed) % num_shards
            for s, example in zip(targets, examples):
                for out in buffers[s].add(example):
                    writers[s].write(out)
                counts[s] += 1
            if len(labels):
                low, high = min(low, float(labels.min())), max(high, float(labels.max()))
            messages.put(("records", len(examples)))
        entries = []
        for s in mine:
            for out in buffers[s].drain():
                writers[s].write(out)
            writers[s].close()
            path = os.path.join(folder, shard_name(s, num_shards))
            os.replace(tmp_paths[s], path)
            entries.append({"file": os.path.basename(path), "records": counts[s],
                            "bytes": os.path.getsize(path), "sha256": sha256(path)})
        messages.put(("done", (entries, (low, high) if low <= high else None)))
    except DistftError as e:
        messages.put(("error", str(e)))
    except Exception as e:
        detail = traceback.format_exception_only(type(e), e)[-1].strip()
        messages.put(("error", f"shard writer failed: {detail}"))
    finally:
        for tmp in tmp_paths.values():
            if os.path.exists(tmp):
                os.remove(tmp)


class _ShuffleBuffer:
    """Holds records up to `capacity` bytes; once full, each new record evicts a random one."""

    def __init__(self, capacity: int, seed: int):
        self.items: list[bytes] = []
        self.bytes, self.capacity = 0, capacity
        self.rng = random.Random(seed)

    def add(self, item: bytes) -> list[bytes]:
        self.items.append(item)
        self.bytes += len(item)
        out = []
        while self.bytes > self.capacity and self.items:
            i = self.rng.randrange(len(self.items))
            self.items[i], self.items[-1] = self.items[-1], self.items[i]
            out.append(self.items.pop())
            self.bytes -= len(out[-1])
        return out

    def drain(self) -> list[bytes]:
        self.rng.shuffle(self.items)
        items, self.items, self.bytes = self.items, [], 0
        return items


class _Progress:
    """A bar on a terminal, else a log line every 10%."""

    def __init__(self, total: int):
        self.total, self.done, self.logged = total, 0, 0
        self.bar = None
        if sys.stdout.isatty():
            import keras

            self.bar = keras.utils.Progbar(total, unit_name="record")

    def add(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.done)
        elif self.done * 10 // self.total > self.logged:
            self.logged = self.done * 10 // self.total
            log.info("sharding: %d/%d records (%d%%)", self.done, self.total, 100 * self.done // self.total)

    def finish(self) -> None:
        if self.bar is not None and self.done < self.total:
            self.bar.update(self.total)
