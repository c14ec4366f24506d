"""Training options: one frozen dataclass, merged from a YAML file and flags, every derived
value decided (`jit` from $DISTFT_JIT), then checked. Nothing changes it afterwards: a run
folder chosen later (`with_run_folder`) is a new object.

Example:
    cfg = TrainConfig.resolve(config="sweep.yaml", epochs=5, lr=3e-4)
    cfg = cfg.with_run_folder()            # runs/MODEL-DATE-TIME unless --output_dir was given
    cfg.save("runs/a/config.yaml")
"""
from __future__ import annotations

import dataclasses
import difflib
import keyword
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from distft.errors import DistftError
from distft.data.text_options import TextOptions
from distft.files import load_yaml
from distft.model import callback_specs, specs
from distft.model.families import PREPROCESSING

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine")
COMPRESSIONS = ("none", "fp16")
ALLREDUCES = ("overlap", "group")
JITS = ("auto", "on", "off")
CONTROLLERS = ("gloo", "mpi")
AUGMENTATIONS = ("flip", "crop", "rotate", "color")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
QUANTIZATIONS = ("int8",)
# Seconds that Horovod's own time-outs (Gloo's, its stall warning) come after --stall_timeout,
# so that the watchdog names a stalled rank first.
STALL_MARGIN = 60


@dataclass(frozen=True)
class TrainConfig:
    """Everything `distft train` accepts. Each field is also a `--flag` and a YAML key."""

    # What to train on
    model: str = field(default="", metadata={
        "group": "model", "help": ".keras, .h5, SavedModel folder, or app:NAME"})
    data: str = field(default="", metadata={"group": "data",
        "help": "file, glob or folder of .tfrecord/.npz/.csv, or a folder of class subfolders of images"})
    output_dir: str = field(default="", metadata={"group": "output",
        "help": "run folder (checkpoints, tensorboard, model); default runs/MODEL-DATE-TIME"})
    val_data: Optional[str] = field(default=None, metadata={
        "group": "data", "help": "validation data, same formats"})
    val_split: float = field(default=0.0, metadata={
        "group": "data", "help": "hold out this fraction of --data"})
    label: str = field(default="label", metadata={"group": "data",
        "help": "CSV label column (numbers or class names), or columns a,b,c for (N, 3) targets"})
    x_key: Optional[str] = field(default=None, metadata={"group": "data",
        "help": "TFRecord feature holding the input (default x or image), e.g. image/encoded"})
    y_key: Optional[str] = field(default=None, metadata={"group": "data",
        "help": "TFRecord feature holding the target (default y), e.g. image/class/label"})
    text_key: str = field(default="text", metadata={"group": "data",
        "help": "text records (.jsonl, .txt, a CSV column, a TFRecord feature): the field of the text"})
    prompt_key: Optional[str] = field(default=None, metadata={"group": "data",
        "help": "with --response_key: prompt/response pairs; a causal LM learns the responses only"})
    response_key: Optional[str] = field(default=None, metadata={"group": "data",
        "help": "the field of the responses (see --prompt_key)"})
    sequence_length: Optional[int] = field(default=None, metadata={"group": "data",
        "help": "text: tokens a record, overriding the model's preprocessor's"})
    # Model surgery
    weights: Optional[str] = field(default=None, metadata={
        "group": "model", "help": "app:NAME weights: FILE or none"})
    input_shape: Optional[tuple] = field(default=None, metadata={
        "group": "model", "help": "app:NAME input H,W,C"})
    num_classes: Optional[int] = field(default=None, metadata={
        "group": "model", "help": "replace the head: K classes"})
    head: Optional[str] = field(default=None, metadata={"group": "model",
        "help": "several outputs: the output whose head --num_classes replaces"})
    head_dropout: float = field(default=0.0, metadata={
        "group": "model", "help": "dropout before the new head"})
    unfreeze: Optional[str] = field(
        default=None,
        metadata={"group": "model", "help": "none|all|last:N|from:NAME|re:PATTERN, comma-separated "
                  "(default: none with a new head, else all)"},
    )
    train_bn: bool = field(default=False, metadata={"group": "model",
        "help": "let unfrozen BatchNorm layers train (moving statistics averaged over workers)"})
    sync_bn: bool = field(default=False, metadata={"group": "distribution",
        "help": "with --train_bn: batch statistics over all workers' batches (small batches)"})
    loss: Optional[str] = field(default=None, metadata={"group": "model",
        "help": "Keras loss, with arguments after colons: NAME:KEY=VALUE:KEY=VALUE, e.g. "
                "sparse_categorical_crossentropy:from_logits=true (YAML: {name: NAME, KEY: VALUE}); "
                "default: the one the model file was compiled with if the head is kept, else "
                "it follows the head; several outputs: OUTPUT=LOSS,..."})
    metrics: Optional[tuple] = field(default=None, metadata={"group": "model",
        "help": "Keras metrics, comma-separated, each with arguments after colons: "
                "accuracy,sparse_top_k_categorical_accuracy:k=3 (YAML: a list of names and "
                "{name: NAME, KEY: VALUE} mappings); default as for --loss; several outputs: "
                "OUTPUT=METRIC,..."})
    loss_weights: Optional[str] = field(default=None, metadata={"group": "model",
        "help": "several outputs: OUTPUT=WEIGHT,... (default 1 each)"})
    label_smoothing: float = field(default=0.0, metadata={"group": "optimisation", "help":
        "crossentropy against targets smoothed toward uniform by this much, e.g. 0.1 (0: off)"})
    unsafe_deserialization: bool = field(
        default=False, metadata={"group": "model", "help": "allow Lambda layers' code in .keras files"})
    import_: Optional[tuple] = field(default=None, metadata={"group": "model",
        "help": "modules (dotted names or .py files), comma-separated, that every worker imports "
                "before loading the model: its custom layers, losses and metrics"})
    # Optimisation
    epochs: int = field(default=3, metadata={"group": "optimisation", "help": "epochs to train"})
    batch_size: int = field(default=32, metadata={"group": "optimisation", "help": "batch size per worker"})
    lr: float = field(default=1e-3, metadata={
        "group": "optimisation", "help": "learning rate for one worker"})
    scale_lr: bool = field(default=True, metadata={
        "group": "optimisation", "help": "multiply --lr by the number of workers"})
    warmup_epochs: float = field(default=0.0, metadata={
        "group": "optimisation", "help": "linear warm-up from --lr to scaled lr"})
    optimizer: str = field(default="adam", metadata={"group": "optimisation", "help": "|".join(OPTIMIZERS)})
    weight_decay: float = field(default=0.004, metadata={
        "group": "optimisation", "help": "adamw weight decay"})
    momentum: float = field(default=0.9, metadata={"group": "optimisation", "help": "sgd momentum"})
    schedule: str = field(default="constant", metadata={
        "group": "optimisation", "help": "|".join(SCHEDULES)})
    grad_accum: int = field(default=1, metadata={
        "group": "optimisation", "help": "batches per allreduce (backward passes)"})
    compression: str = field(default="none", metadata={
        "group": "distribution", "help": "allreduce compression: none|fp16"})
    allreduce: str = field(default="overlap", metadata={"group": "distribution",
        "help": "overlap: one async allreduce per gradient, started as the backward pass makes it "
                "(Horovod fuses what is ready together) | group: one group after the backward pass"})
    seed: int = field(default=42, metadata={
        "group": "optimisation", "help": "seed for weights of the new head and shuffling"})
    shuffle_buffer: int = field(default=10000, metadata={
        "group": "data", "help": "records in each worker's shuffle buffer"})
    callbacks: Optional[str] = field(default=None, metadata={"group": "optimisation",
        "help": "Keras callbacks on every worker, e.g. \"keras.callbacks.EarlyStopping(monitor="
                "'val_loss', patience=2)\": CLASS(KEY=VALUE, ...) with literal values, several "
                "separated by ';' (YAML: a list); CLASS in keras.callbacks or MODULE.CLASS of "
                "--import; they see the metrics over all workers, and a stop_training on any "
                "worker stops all at the same step"})
    early_stopping: Optional[str] = field(default=None, metadata={"group": "optimisation",
        "help": "METRIC[:patience=N:min_delta=D:mode=min|max]: Keras's EarlyStopping on METRIC "
                "(e.g. val_loss:patience=3; Keras's defaults: patience 0, mode from the metric)"})
    # Data pipeline
    preprocess: str = field(default="auto", metadata={"group": "data",
        "help": "images: auto ([0,255] when the model starts with Rescaling or Normalization, "
                "else [0,1]), scale to [0,1], none ([0,255]), or a keras.applications family's "
                "preprocess_input (mobilenet_v2, resnet50, efficientnet, ...); a Keras Hub image "
                "task saved with its preprocessor: that one, always (leave --preprocess out)"})
    augment: Optional[tuple] = field(default=None, metadata={"group": "data",
        "help": "images, training only: any of flip,crop,rotate,color"})
    cache: Optional[str] = field(default=None, metadata={"group": "data",
        "help": "memory|DIR: cache each worker's decoded share (the share then stays fixed)"})
    steps_per_epoch: Optional[int] = field(default=None, metadata={"group": "optimisation",
        "help": "steps of each worker per epoch (default: one pass over the data by all workers)"})
    # Fine-tuning methods
    unfreeze_schedule: Optional[str] = field(
        default=None, metadata={
            "group": "methods", "help": "staged unfreezing EPOCH:SPEC,EPOCH:SPEC (SPEC as --unfreeze), "
                                "e.g. 0:last:2,3:from:block_13,6:all"})
    lr_mult: Optional[str] = field(
        default=None, metadata={
            "group": "methods", "help": "layer-wise learning rates SPEC=FACTOR,... e.g. re:^block_1=0.1"})
    cache_frozen: bool = field(
        default=False, metadata={
            "group": "methods", "help": "compute the frozen prefix once per worker, train the rest"})
    precision: str = field(default="float32", metadata={"group": "methods", "help": "|".join(PRECISIONS)})
    jit: Optional[str] = field(default=None, metadata={"group": "methods",
        "help": "XLA for the step's forward, backward and update: auto (on when TensorFlow sees a "
                "GPU, as in Keras) | on | off; default $DISTFT_JIT, else auto"})
    steps_per_execution: int = field(default=1, metadata={"group": "distribution",
        "help": "training steps per call of the train function: one host sync per N steps; a stop "
                "or elastic commit waits for the call's end"})
    ema: float = field(default=0.0, metadata={
        "group": "methods", "help": "moving average of the weights, e.g. 0.999 (0: off)"})
    lora: int = field(default=0, metadata={"group": "methods",
        "help": "LoRA rank: train low-rank factors of Dense/EinsumDense/Embedding layers (0: off)"})
    lora_layers: Optional[str] = field(default=None, metadata={"group": "methods",
        "help": "regex on layer paths (e.g. 'query|value') for --lora (default: all those that "
                "do not train whole; in a Keras Hub backbone those its enable_lora picks)"})
    lora_alpha: Optional[float] = field(default=None, metadata={"group": "methods",
        "help": "LoRA scale: updates are alpha/rank * A @ B (default: the rank)"})
    quantize: Optional[str] = field(default=None, metadata={"group": "methods",
        "help": "int8: the frozen weights quantized (Keras 3's quantize), LoRA trains on top; "
                "model.keras is the float base with the factors merged"})
    save_adapter: bool = field(default=False, metadata={"group": "methods",
        "help": "with --lora: also write the factors alone to adapter.npz"})
    # Run
    threads: Optional[int] = field(default=None, metadata={"group": "distribution",
        "help": "TensorFlow intra-op threads per worker (default: its cores on CPU, TF's own on GPU)"})
    require_gpu: bool = field(default=False, metadata={"group": "distribution",
        "help": "stop unless every worker has a GPU TensorFlow can use"})
    log_every: int = field(default=50, metadata={
        "group": "output", "help": "steps between step-level logs"})
    keep_checkpoints: int = field(default=3, metadata={
        "group": "output", "help": "newest checkpoints kept (0: all)"})
    keep_best: Optional[str] = field(default=None, metadata={"group": "output",
        "help": "METRIC[:mode=min|max]: model.keras holds the weights of the epoch with the best "
                "METRIC (e.g. val_loss; direction as Keras infers it), not the last epoch's"})
    resume: bool = field(default=False, metadata={
        "group": "output", "help": "continue from the last checkpoint"})
    overwrite: bool = field(default=False, metadata={
        "group": "output", "help": "replace a finished run's outputs"})
    # Launching (outside a launcher)
    np: Optional[int] = field(default=None, metadata={
        "group": "distribution", "help": "start this many workers"})
    hosts: Optional[str] = field(default=None, metadata={
        "group": "distribution", "help": "h1:2,h2:2 for --np"})
    controller: str = field(default="gloo", metadata={
        "group": "distribution", "help": "--np controller: gloo|mpi"})
    min_np: Optional[int] = field(default=None, metadata={"group": "distribution",
        "help": "elastic --np: go on while at least this many workers are left"})
    max_np: Optional[int] = field(default=None, metadata={"group": "distribution",
        "help": "elastic --np: grow up to this many workers when hosts appear"})
    host_discovery: Optional[str] = field(default=None, metadata={"group": "distribution",
        "help": "elastic --np: executable printing the usable hosts as host:slots lines"})
    commit_every: int = field(default=100, metadata={"group": "distribution",
        "help": "elastic: steps between in-memory commits of the training state"})
    elastic_timeout: int = field(default=120, metadata={"group": "distribution",
        "help": "elastic --np: seconds to wait for workers: for --min_np after a loss, for a joining "
                "worker's start"})
    stall_timeout: int = field(default=300, metadata={"group": "distribution",
        "help": "seconds the others may wait for a rank that makes no progress (stopped, hung, "
                "blocked in a read, in another collective): then it is named, every rank's stack "
                "goes to stall-report.txt, and the job exits 75 to --resume (elastic: the rank is evicted "
                "and the others go on; 0: off)"})
    debug: bool = field(default=False, metadata={
        "group": "output", "help": "show tracebacks and all ranks' logs"})
    # TensorBoard
    rank_health: bool = field(default=True, metadata={"group": "output",
        "help": "per-rank step time, allreduce wait and input-bound share, one gather per epoch"})
    slow_rank: float = field(default=0.2, metadata={"group": "output",
        "help": "log a rank whose busy time per step exceeds the median by this fraction..."})
    slow_rank_epochs: int = field(default=2, metadata={
        "group": "output", "help": "...for this many epochs in a row"})
    histograms: int = field(default=0, metadata={"group": "output",
        "help": "every N epochs: weight histograms and each layer's relative change (0: off)"})
    generations: int = field(default=1, metadata={"group": "output",
        "help": "causal LM: every N epochs, what it says to a few validation prompts (Text tab; 0: off)"})
    profile: Optional[str] = field(default=None, metadata={"group": "output",
        "help": "START:END: TensorFlow profiler trace of these steps (Profile tab)"})
    profile_ranks: Optional[tuple] = field(default=None, metadata={"group": "output",
        "help": "ranks that record --profile, comma-separated (default: 0)"})

    @classmethod
    def resolve(cls, config: str | None = None, **flags: Any) -> TrainConfig:
        """Merge a YAML file and flags (flags win), coerce types, and check values."""
        values: dict[str, Any] = {}
        if config:
            values.update(load_yaml(config))
        values.update(flags)
        values = {field_name(k): v for k, v in values.items()}
        check_names(values, cls)
        values = {k: coerce(cls, k, v) for k, v in values.items()}
        values["jit"] = _jit(values.get("jit"), values.get("sync_bn", False))
        cfg = cls(**values)
        cfg.check()
        return cfg

    def with_run_folder(self, agree: Callable[[Callable[[], str]], str] = lambda choose: choose()
                        ) -> TrainConfig:
        """This configuration with its run folder decided: --output_dir, else
        `runs/MODEL-DATE-TIME`, chosen once (`agree`: rank 0's choice for all workers)."""
        if self.output_dir:
            return self
        return dataclasses.replace(self, output_dir=agree(lambda: default_output_dir(self.model)))

    def text(self) -> TextOptions:
        """Where text records hold their text (see data/formats/text.py)."""
        return TextOptions(self.text_key, self.prompt_key, self.response_key, self.sequence_length)

    def check(self) -> None:
        """Raise DistftError for values no run could use."""
        for name in ("model", "data"):
            if not getattr(self, name):
                raise DistftError(f"--{name} is required: pass --{name}=...")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "grad_accum": self.grad_accum, "log_every": self.log_every,
                    "steps_per_execution": self.steps_per_execution}
        for name, value in positive.items():
            _positive(name, value)
        if self.sequence_length is not None:
            _positive("sequence_length", self.sequence_length)
        self.text()  # --prompt_key and --response_key together
        if self.quantize not in (None, *QUANTIZATIONS):
            raise DistftError(f"--quantize={self.quantize} is not one of {', '.join(QUANTIZATIONS)}")
        if not 0.0 <= self.val_split < 1.0:
            raise DistftError(f"--val_split must be in [0, 1), got {self.val_split}")
        if self.val_split and self.val_data:
            raise DistftError("--val_split and --val_data exclude each other: pass one")
        if not 0.0 <= self.head_dropout < 1.0:
            raise DistftError(f"--head_dropout must be in [0, 1), got {self.head_dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise DistftError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.num_classes is not None and self.num_classes < 2:
            raise DistftError(f"--num_classes must be at least 2, got {self.num_classes}")
        if self.warmup_epochs < 0 or self.keep_checkpoints < 0 or self.shuffle_buffer < 0:
            raise DistftError("--warmup_epochs, --keep_checkpoints and --shuffle_buffer must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise DistftError(f"--threads must be at least 1, got {self.threads}")
        _workers(self.np)
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("compression", COMPRESSIONS), ("controller", CONTROLLERS),
                              ("allreduce", ALLREDUCES), ("jit", JITS)):
            _one_of(name, getattr(self, name), allowed)
        _one_of("preprocess", self.preprocess, PREPROCESSING)
        unknown = sorted(set(self.augment or ()) - set(AUGMENTATIONS))
        if unknown:
            raise DistftError(f"--augment={','.join(self.augment)}: {', '.join(unknown)} unknown; "
                              f"use any of {','.join(AUGMENTATIONS)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise DistftError(f"--steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.cache == "":
            raise DistftError("--cache needs a value: --cache=memory or --cache=DIR")
        if self.sync_bn and not self.train_bn:
            raise DistftError("--sync_bn synchronises BatchNorm layers that train: pass --train_bn too")
        if self.sync_bn and self.jit == "on":
            raise DistftError("--sync_bn allreduces in the forward pass, which XLA cannot compile: "
                              "pass --jit=off (or auto)")
        if self.resume and self.overwrite:
            raise DistftError("--resume and --overwrite exclude each other: pass one")
        self._check_objective()
        self._check_callbacks()
        self._check_methods()
        self._check_tensorboard()
        self._check_elastic()

    def _check_objective(self) -> None:
        """--loss's and --metrics' items are NAME[:KEY=VALUE...] (whether Keras knows the names
        and arguments is checked with the model: --import may register them)."""
        specs.parse_all(self.loss.split(",") if self.loss else [], "loss")
        specs.parse_all(list(self.metrics or ()), "metrics")

    def _check_callbacks(self) -> None:
        """--callbacks, --early_stopping and --keep_best parse, and a val_ metric they monitor
        has validation data (whether Keras knows the classes is checked on the workers)."""
        for option, metric in callback_specs.monitored(self.callbacks, self.early_stopping, self.keep_best):
            if metric.startswith("val_") and not (self.val_data or self.val_split):
                raise DistftError(f"{option}: {metric} is a validation metric and the run has no "
                                  "validation data: pass --val_data or --val_split")

    def _check_methods(self) -> None:
        """The fine-tuning methods' flags (their layer specs are checked against the model later)."""
        from distft.model import stages

        if self.precision not in PRECISIONS:
            raise DistftError(f"--precision={self.precision} is not one of {'|'.join(PRECISIONS)}")
        if not 0.0 <= self.ema < 1.0:
            raise DistftError(f"--ema must be in [0, 1) (e.g. 0.999; 0 turns it off), got {self.ema}")
        if self.unfreeze_schedule is not None:
            if self.unfreeze is not None:
                raise DistftError("--unfreeze and --unfreeze_schedule exclude each other: "
                                  "put the first stage in the schedule (0:SPEC,...)")
            schedule = stages.parse_schedule(self.unfreeze_schedule)
            if schedule[-1].epoch >= self.epochs:
                raise DistftError(f"--unfreeze_schedule: stage at epoch {schedule[-1].epoch} is never "
                                  f"reached with --epochs={self.epochs}: raise --epochs or drop it")
        if self.lr_mult is not None:
            stages.parse_lr_mult(self.lr_mult)
        self._check_lora()

    def _check_lora(self) -> None:
        if self.lora < 0:
            raise DistftError(f"--lora is the LoRA rank (0: off), got {self.lora}: pass e.g. --lora=8")
        if not self.lora:
            given = [n for n in ("lora_layers", "lora_alpha", "save_adapter")
                     if getattr(self, n) is not None and getattr(self, n) is not False]
            if given:
                raise DistftError(f"--{given[0]} needs --lora=RANK: pass it, e.g. --lora=8")
            return
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise DistftError(f"--lora_alpha must be positive, got {self.lora_alpha}")
        if self.unfreeze_schedule is not None:
            raise DistftError("--lora and --unfreeze_schedule exclude each other: pass one")
        if self.lora_layers is not None:
            try:
                re.compile(self.lora_layers)
            except re.error as e:
                raise DistftError(f"--lora_layers={self.lora_layers}: bad regular expression ({e})"
                                  ) from None

    @property
    def elastic(self) -> bool:
        """True when --min_np, --max_np or --host_discovery ask for an elastic --np job."""
        return self.min_np is not None or self.max_np is not None or self.host_discovery is not None

    def _check_elastic(self) -> None:
        if self.commit_every < 1:
            raise DistftError(f"--commit_every must be at least 1, got {self.commit_every}: pass "
                              f"e.g. --commit_every={TrainConfig.commit_every}")
        if self.stall_timeout < 0:
            raise DistftError(f"--stall_timeout must be >= 0 seconds (0: off), got {self.stall_timeout}: "
                              f"pass e.g. --stall_timeout={TrainConfig.stall_timeout}")
        if self.elastic_timeout < 1:
            raise DistftError(f"--elastic_timeout must be at least 1 second, got {self.elastic_timeout}: "
                              f"pass e.g. --elastic_timeout={TrainConfig.elastic_timeout}")
        if self.elastic:  # the launcher refuses before it starts a worker; distft.train.elastic again
            self.check_elastic_mode()

    def check_elastic_mode(self) -> None:
        """Raise DistftError for what an elastic job cannot do."""
        if not self.output_dir:
            raise DistftError("elastic mode needs --output_dir: every worker, a late one too, must "
                              "write to the same run folder")
        if "HOROVOD_FUSION_THRESHOLD" in os.environ:
            # Seen here with 64 MB and with Horovod's own default, 128 MB: the survivors of a lost
            # worker crash in hvd.init() (SIGSEGV) instead of going on.
            raise DistftError("HOROVOD_FUSION_THRESHOLD is set, and Horovod 0.28.1 crashes on an elastic "
                              "reset when it is: unset it for elastic jobs (Horovod's 128 MB applies)")
        if self.keep_best:  # its best so far is not part of the in-memory commits (RunState.best)
            raise DistftError("--keep_best does not work in elastic mode yet: leave it out, and pick "
                              "the best epoch's checkpoint by the metrics in its state.json")

    def _check_tensorboard(self) -> None:
        if self.generations < 0:
            raise DistftError(f"--generations must be >= 0 (epochs between generations; 0: off), "
                              f"got {self.generations}: pass e.g. --generations=1")
        if self.histograms < 0:
            raise DistftError(f"--histograms must be >= 0 (epochs between histograms; 0: off), "
                              f"got {self.histograms}: pass e.g. --histograms=1")
        if self.slow_rank <= 0 or self.slow_rank_epochs < 1:
            raise DistftError(f"--slow_rank must be > 0 and --slow_rank_epochs at least 1, got "
                              f"{self.slow_rank} and {self.slow_rank_epochs}: pass e.g. "
                              "--slow_rank=0.2 --slow_rank_epochs=2")
        if self.profile is not None:
            self.profile_steps()
        elif self.profile_ranks is not None:
            raise DistftError("--profile_ranks needs --profile=START:END: pass both")
        if self.profile_ranks is not None and not all(r.isdigit() for r in self.profile_ranks):
            raise DistftError(f"--profile_ranks={','.join(self.profile_ranks)} is not a list of "
                              "ranks: pass e.g. --profile_ranks=0,1")

    def profiled_ranks(self, size: int) -> list[int]:
        """The ranks --profile_ranks names (default 0), checked against the job's `size`."""
        ranks = sorted({int(r) for r in self.profile_ranks or ("0",)})
        if ranks[-1] >= size:
            raise DistftError(f"--profile_ranks={','.join(map(str, ranks))} names rank {ranks[-1]} but the "
                              f"job has {size} worker(s): pass ranks below {size}")
        return ranks

    def profile_steps(self) -> tuple[int, int]:
        """--profile as (first, last) step, 1-based over the whole run."""
        start, _, end = str(self.profile).partition(":")
        if not (start.isdigit() and end.isdigit() and 1 <= int(start) <= int(end)):
            raise DistftError(f"--profile={self.profile} is not START:END with 1 <= START <= END: "
                              "pass steps, e.g. --profile=5:15")
        return int(start), int(end)

    def to_dict(self) -> dict[str, Any]:
        """The options by their flag and YAML names (`import`, not the field `import_`)."""
        return {option_name(k): list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str) -> None:
        """Write the resolved configuration as YAML (atomically)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)
        os.replace(tmp, path)


def evaluation_options(batch_size: Any, preprocess: str, metrics: Any, np: Any
                       ) -> tuple[int, str, Optional[tuple], Optional[int]]:
    """`distft evaluate`'s and `predict`'s options that train shares, coerced and checked as
    train's: (batch_size, preprocess, metrics, np)."""
    batch_size, metrics, np = (coerce(TrainConfig, n, v) for n, v in
                               (("batch_size", batch_size), ("metrics", metrics), ("np", np)))
    _positive("batch_size", batch_size)
    _one_of("preprocess", preprocess, PREPROCESSING)
    _workers(np)
    specs.parse_all(list(metrics or ()), "metrics")
    return batch_size, preprocess, metrics, np


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise DistftError(f"--{name} must be positive, got {value}: pass e.g. "
                          f"--{name}={getattr(TrainConfig, name)}")


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise DistftError(f"--{name}={value} is not one of {'|'.join(allowed)}")


def _workers(np: Optional[int]) -> None:
    if np is not None and np < 1:
        raise DistftError(f"--np must be at least 1, got {np}")


def _jit(jit: Optional[str], sync_bn: bool) -> str:
    """--jit, else the site's default $DISTFT_JIT (not with --sync_bn, whose allreduce cannot
    compile), else auto; a bare --jit is on."""
    if jit is None:
        jit = "auto" if sync_bn else os.environ.get("DISTFT_JIT", "auto")
        if jit not in JITS:
            raise DistftError(f"DISTFT_JIT={jit} is not one of {'|'.join(JITS)}: fix or unset the variable")
    return {"true": "on", "false": "off"}.get(str(jit).lower(), str(jit))


def default_output_dir(model: str) -> str:
    """`runs/<model name>-<date>-<time>`: the run folder when --output_dir is not given."""
    import time

    stem = os.path.splitext(os.path.basename(os.path.normpath(model)))[0].replace("app:", "") or "run"
    return os.path.join("runs", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


def field_name(option: str) -> str:
    """The TrainConfig field of an option: `import`, a Python keyword, is the field `import_`."""
    return f"{option}_" if keyword.iskeyword(option) else option


def option_name(name: str) -> str:
    """The flag and YAML name of a TrainConfig field: the field `import_` is `--import`."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


# Names other tools use for our options, for the "did you mean" hint.
ALIASES = {"learning_rate": "lr", "num_workers": "np", "workers": "np", "nproc": "np",
           "output": "output_dir", "out": "output_dir", "logdir": "output_dir",
           "classes": "num_classes", "freeze": "unfreeze", "batch": "batch_size"}


def check_names(values: dict[str, Any], cls: type) -> None:
    """Reject unknown option names, suggesting the closest known ones."""
    known = [f.name for f in dataclasses.fields(cls)]
    for name in values:
        if name not in known:
            close = [ALIASES[name]] if ALIASES.get(name) in known else \
                difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join('--' + option_name(c) for c in close)}?" if close else \
                "see 'distft train --help'"
            raise DistftError(f"unknown option --{name}: {hint}")


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def to_bool(value: Any) -> bool:
    """A flag's boolean: True/False, or true|yes|1|on / false|no|0|off; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(value)
    return text in _TRUE


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a flag or YAML value to the field's declared type."""
    hint = get_type_hints(cls)[name]
    optional = get_origin(hint) is Union and type(None) in get_args(hint)
    if optional:
        hint = next(a for a in get_args(hint) if a is not type(None))
        if value is None or (isinstance(value, str) and value.lower() in ("", "null")):
            return None
    try:
        if hint is bool:
            return to_bool(value)
        if hint is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if name == "callbacks" and isinstance(value, (list, tuple)):  # YAML: a list of calls
            return "; ".join(str(v) for v in value)
        if name in ("loss", "metrics") and not isinstance(value, str):
            # YAML: a name, {name: NAME, KEY: VALUE}, a list, or a mapping by output
            found = specs.items(value, name)
            return tuple(found) if hint is tuple else ",".join(found)
        if hint is tuple:
            if isinstance(value, dict):  # YAML {OUTPUT: NAME or [NAMES], ...}
                value = [f"{k}={v}" for k, vs in value.items() for v in (vs if isinstance(vs, list) else [vs])]
            items = value.split(",") if isinstance(value, str) else \
                list(value) if isinstance(value, (list, tuple)) else [value]
            items = [i.strip() if isinstance(i, str) else i for i in items if i != ""]
            if name == "input_shape":
                return tuple(int(i) for i in items)
            return tuple(str(i) for i in items)
        if isinstance(value, (list, tuple)):  # Fire reads --label=a,b as a tuple
            return ",".join(map(str, value))
        if isinstance(value, dict):  # YAML {OUTPUT: VALUE, ...}
            return ",".join(f"{k}={v}" for k, v in value.items())
        return str(value)
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number",
                tuple: "a comma-separated list"}.get(hint, "a string")
        raise DistftError(f"--{name}={value!r} is not {kind}: fix the value") from None


# The groups of TrainConfig's fields (each field's metadata "group"), in the order that
# `distft train --help` and the documentation's CLI reference list them, with their headings.
GROUPS = {
    "model": "Model",
    "data": "Data",
    "optimisation": "Optimisation",
    "methods": "Fine-tuning methods",
    "distribution": "Distribution and launching",
    "output": "Output and monitoring",
}


def option_groups() -> list[tuple[str, list[dataclasses.Field]]]:
    """TrainConfig's fields by group: (heading, fields) in GROUPS' order, each group's fields in
    the dataclass's order. `distft train --help` and the CLI reference are made from this."""
    fields = dataclasses.fields(TrainConfig)
    stray = [f.name for f in fields if f.metadata.get("group") not in GROUPS]
    if stray:
        raise ValueError(f"TrainConfig fields without a known group ({', '.join(GROUPS)}): "
                         f"{', '.join(stray)}")
    return [(heading, [f for f in fields if f.metadata["group"] == key])
            for key, heading in GROUPS.items()]
