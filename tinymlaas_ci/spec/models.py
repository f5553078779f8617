"""The spec files a team commits: runs, devices, pipelines.

Every model forbids unknown keys and documents every field; those docstrings become the JSON
Schema descriptions and the spec reference on the website. Every file carries ``schema: 1``.
"""

from __future__ import annotations

import graphlib
import re
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tinymlaas_ci.hostinfo import ARCH_ALIASES, ARCHES, Arch, arch_hint, canonical_arch
from tinymlaas_ci.spec.text import address_problem, description_problems

__all__ = [
    "BUILTIN_STAGES",
    "DEFAULT_PIPELINE",
    "MCU_BOARDS",
    "NAME_PATTERN",
    "NAME_RULE",
    "SCHEMA_VERSION",
    "Architecture",
    "Compression",
    "DatasetFormat",
    "DatasetSource",
    "DeviceSpec",
    "DockerDevice",
    "DockerEndpoint",
    "Gates",
    "InputLayout",
    "LocalDevice",
    "LocatedError",
    "McuDevice",
    "Measure",
    "ModelFormat",
    "ModelSource",
    "PipelineSpec",
    "Preprocess",
    "Pruning",
    "Quantization",
    "Resources",
    "RunSpec",
    "Runtime",
    "SerialPort",
    "SshDevice",
    "SshEndpoint",
    "StageSpec",
    "suggest",
]

SCHEMA_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
NAME_RULE = "use 1 to 63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
"""How to fix a project, run, device or pipeline name that does not match :data:`NAME_PATTERN`."""
_NAME_RE = re.compile(NAME_PATTERN)
_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")

Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=63)]


class LocatedError(ValueError):
    """A validator's error that knows where inside the validated value it belongs.

    ``items`` are ``(loc, message, hint)`` with ``loc`` relative to the value the validator
    checked (``()`` for the value itself). :mod:`tinymlaas_ci.spec.validate` turns each item
    into its own problem, so a model validator can point at the exact key and report several
    problems at once; ``str()`` is the first message, for callers that use the models directly.
    """

    def __init__(self, items: list[tuple[tuple, str, str | None]]) -> None:
        self.items = [(tuple(loc), message, hint) for loc, message, hint in items]
        super().__init__(self.items[0][1] if self.items else "invalid")

    @classmethod
    def at(cls, loc: tuple, message: str, hint: str | None = None) -> LocatedError:
        return cls([(loc, message, hint)])


def suggest(word: str, choices: Iterable[str], shown: Callable[[str], str] = str) -> str | None:
    """The "did you mean" hint: the closest choice, else the choices that contain ``word`` (so
    that ``int8`` suggests ``dynamic-int8`` and ``static-int8``); None when nothing is close.

    ``shown`` writes a choice as the user should type it (a full dotted key, a path).
    """
    import difflib

    choices = [str(c) for c in choices]
    word = str(word)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        low = word.lower()
        close = [c for c in choices if len(low) >= 2 and low in c.lower()]
        if not close or len(close) > 3:
            return None
    return "did you mean " + " or ".join(repr(shown(c)) for c in close) + "?"


def _matrix_key_schema(schema: dict[str, Any]) -> None:
    """Matrix keys in the JSON Schema: only the dotted keys a sweep accepts (an editor then
    underlines a typo such as ``compression.quantisation``)."""
    from tinymlaas_ci.spec.repo import sweepable_keys  # the one rule, defined next to the check

    schema["propertyNames"] = {"enum": sweepable_keys()}


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        str_strip_whitespace=True,
        validate_default=True,
    )


def _safe_description(value: str) -> str:
    """A description is shown on the website, in email and in PR comments: plain text or safe
    Markdown only (:func:`tinymlaas_ci.spec.text.description_problems`)."""
    problems = description_problems(value)
    if problems:
        raise LocatedError([((), f"the description {message}", hint) for message, hint in problems])
    return value


Description = Annotated[str, AfterValidator(_safe_description)]


class Quantization(str, Enum):
    """How weights (and activations) are quantized."""

    none = "none"
    dynamic_int8 = "dynamic-int8"
    static_int8 = "static-int8"
    fp16 = "fp16"


class ModelFormat(str, Enum):
    auto = "auto"
    pytorch = "pytorch"
    safetensors = "safetensors"
    torchscript = "torchscript"
    exported_program = "exported-program"
    onnx = "onnx"


class DatasetFormat(str, Enum):
    auto = "auto"
    imagefolder = "imagefolder"
    parquet = "parquet"
    csv = "csv"
    numpy = "numpy"


class InputLayout(str, Enum):
    """Axis order of an image model's input: channels first (PyTorch) or last (Keras/TF)."""

    nchw = "nchw"
    nhwc = "nhwc"


class Runtime(str, Enum):
    """The inference runtime: ONNX Runtime, TorchScript, C generated from the int8 model, or
    ``auto``: the faster of ONNX Runtime and C for a static-int8 model, timed at compile."""

    onnxruntime = "onnxruntime"
    pytorch = "pytorch"
    c = "c"
    auto = "auto"


class _Source(_Spec):
    upload: str | None = None
    """Path of a file in this repository, relative to the repository root (e.g. ``uploads/m/model.pkl``)."""
    huggingface: str | None = None
    """A Hugging Face repository id, ``owner/name``."""
    revision: str = "main"
    """Branch, tag or commit of the Hugging Face repository; resolved to a commit sha and recorded."""

    @field_validator("upload")
    @classmethod
    def _upload_is_relative(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", value):
            raise LocatedError.at(
                (),
                f"upload path {value!r} is absolute",
                "give a path relative to the repository root, e.g. uploads/my-model/model.onnx",
            )
        parts = re.split(r"[\\/]", value)
        if ".." in parts:
            raise LocatedError.at(
                (),
                f"upload path {value!r} contains '..'",
                "uploads must stay inside the repository: give a path under it without '..'",
            )
        if not value or value.endswith("/"):
            raise LocatedError.at(
                (),
                f"upload path {value!r} does not name a file",
                "give the path of a file, e.g. uploads/my-model/model.onnx",
            )
        return value

    @field_validator("huggingface")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and not _HF_REPO_RE.match(value):
            raise LocatedError.at(
                (),
                f"{value!r} is not a Hugging Face repository id",
                "write it as 'owner/name', e.g. 'google/mobilenet_v2_1.0_224'",
            )
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [k for k in ("upload", "huggingface") if getattr(self, k) is not None]
        if not given:
            raise LocatedError.at(
                (), "no source given", "add 'upload' with a file in the repository, or 'huggingface' with a Hub repo id"
            )
        if len(given) > 1:
            raise LocatedError.at(
                ("huggingface",),
                "give only one source: 'upload' or 'huggingface', not both",
                "remove one of the two",
            )
        return self

    @property
    def kind(self) -> str:
        return "upload" if self.upload is not None else "huggingface"


class Architecture(_Spec):
    """The network a bare weights file (``.safetensors``, ``pytorch_model.bin``, a ``state_dict``)
    is loaded into. Give exactly one of ``torchvision``, ``timm``, ``transformers`` or ``python``."""

    torchvision: str | None = None
    """A ``torchvision.models`` builder name, e.g. ``mobilenet_v2`` (needs the ``torchvision`` extra)."""
    timm: str | None = None
    """A timm model name, e.g. ``resnet18`` (needs the ``timm`` extra)."""
    transformers: Literal["auto"] | None = None
    """``auto``: the architecture named by the repository's ``config.json`` (needs the ``transformers`` extra)."""
    python: str | None = Field(default=None, pattern=r"^[\w./-]+\.py:[A-Za-z_]\w*$")
    """``file.py:ClassName``: a class defined in a Python file next to the model (upload folder or Hub repository)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the builder or class, e.g. ``{num_classes: 10, in_chans: 1}``."""

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("torchvision", "timm", "transformers", "python") if getattr(self, k) is not None]
        if len(given) != 1:
            raise LocatedError.at(
                (),
                "model.architecture needs exactly one of torchvision, timm, transformers, python"
                + (f" (got {', '.join(given)})" if given else ""),
                "e.g. 'architecture: {timm: resnet18, kwargs: {num_classes: 10}}'",
            )
        return self

    @property
    def kind(self) -> str:
        """Which library builds the network."""
        return next(k for k in ("torchvision", "timm", "transformers", "python") if getattr(self, k) is not None)


class Preprocess(_Spec):
    """How raw samples become model inputs, in this order: ``channels``, ``resize``, ``scale``,
    then ``(x - mean) / std`` per channel. Applied identically in calibration, fine-tuning,
    inference and the exported bundle. Unset fields come from the model's own metadata where it
    publishes them (timm ``pretrained_cfg``, transformers ``preprocessor_config.json``, a fastai
    Learner), else from the defaults."""

    resize: list[Annotated[int, Field(ge=1, le=16384)]] | None = Field(default=None, min_length=2, max_length=2)
    """``[H, W]`` to resize images to (bilinear)."""
    channels: Literal[1, 3] | None = None
    """Convert images to 1 (grayscale, ITU-R 601 luma) or 3 (RGB) channels."""
    scale: float | None = Field(default=None, gt=0.0)
    """Factor applied to raw values; default ``1/255`` for 8-bit images, ``1/65535`` for 16-bit,
    ``1`` for other numbers."""
    mean: list[float] | None = Field(default=None, min_length=1, max_length=4)
    """Per-channel mean subtracted after scaling (one value applies to every channel)."""
    std: list[Annotated[float, Field(gt=0.0)]] | None = Field(default=None, min_length=1, max_length=4)
    """Per-channel standard deviation divided by after subtracting ``mean``."""


class ModelSource(_Source):
    """Where the model comes from and how to read it."""

    file: str | None = None
    """File inside the Hugging Face repository (e.g. ``model.onnx``). Required with ``huggingface``."""
    format: ModelFormat = ModelFormat.auto
    """Model format; ``auto`` decides from the file extension and content."""
    input_shape: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(default=None, min_length=1, max_length=6)
    """Shape of one input sample without the batch axis (e.g. ``[1, 8, 8]``), when the format cannot tell."""
    architecture: Architecture | None = None
    """The network a weights file (``.safetensors``, ``.bin``, a ``state_dict``) is loaded into; when
    absent, it comes from the repository's ``config.json`` (timm's ``architecture``, transformers'
    ``architectures``)."""
    input_layout: InputLayout | None = None
    """``nchw`` or ``nhwc``; by default detected from the model's input against the dataset's samples."""
    code: str | None = Field(default=None, pattern=r"^[\w./-]+\.py$")
    """A Python file (next to the model) that defines the classes of a pickle saved from a script's
    ``__main__``, e.g. ``train.py``. It is imported as ``__main__``'s stand-in, without running its
    ``if __name__ == "__main__":`` block."""

    @model_validator(mode="after")
    def _hf_needs_file(self):
        if self.huggingface is not None and not self.file:
            raise LocatedError.at(
                ("huggingface",),
                "a Hugging Face model needs 'file', the model file inside the repository",
                "add e.g. 'file: model.onnx' next to 'huggingface'",
            )
        if self.upload is not None and self.file is not None:
            raise LocatedError.at(
                ("file",),
                "'file' applies to Hugging Face models only; an upload already names its file",
                "remove 'file'",
            )
        return self


class DatasetSource(_Source):
    """Where the dataset comes from. Archives (``.zip``, ``.tar.gz``) use the ImageFolder layout
    ``{train,val,test}/<label>/<file>`` (images, ``.npy`` arrays or raw float32 ``.bin`` tensors);
    parquet has an image and a label column; CSV has a label column and feature columns;
    ``.npy``/``.npz`` hold ``x`` and ``y``. Splits are files or folders named after them, or a
    ``split_column``."""

    split: str = "test"
    """The split that inference is measured on. Never the training split."""
    format: DatasetFormat = DatasetFormat.auto
    """Dataset layout; ``auto`` detects ImageFolder or parquet."""
    image_column: str = "image"
    """Parquet datasets: the column holding the images (or feature arrays)."""
    label_column: str = "label"
    """Parquet and CSV datasets: the column holding the labels (class indices or names)."""
    split_column: str | None = None
    """CSV and parquet datasets in one file: the column naming each row's split (train, val, test)."""
    labels: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    """The model's output order: label names by output index. Default: the model's own metadata
    (``id2label``, a Learner's vocab), then the dataset's class names (parquet ClassLabel), then
    folder names (integers in numeric order; other names sorted, with a warning)."""
    preprocess: Preprocess | None = None
    """How raw samples become model inputs (resize, channels, scale, mean, std)."""

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            twice = sorted({v for v in value if value.count(v) > 1})
            if twice:
                raise LocatedError.at((), f"dataset.labels names {twice[0]!r} twice", "give each label once")
        return value

    @field_validator("split")
    @classmethod
    def _not_train(cls, value: str) -> str:
        if value == "train":
            raise LocatedError.at(
                (), "accuracy is measured on held-out data, not on the 'train' split", "use 'test' or 'val'"
            )
        return value


class Pruning(_Spec):
    """Magnitude pruning of weights, optionally followed by fine-tuning."""

    sparsity: float = Field(ge=0.0, lt=1.0)
    """Fraction of weights set to zero in each prunable layer, in ``[0, 1)``."""
    fine_tune_epochs: int = Field(default=0, ge=0, le=1000)
    """Epochs of fine-tuning on the train split after pruning (PyTorch models only)."""
    learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0)
    """Learning rate of the fine-tuning."""


class Compression(_Spec):
    """How the model is compressed before it is installed."""

    quantization: Quantization = Quantization.none
    """``none``, ``dynamic-int8``, ``static-int8`` (calibrated) or ``fp16``."""
    calibration_samples: int = Field(default=256, ge=1, le=1_000_000)
    """Samples from the train (else val) split used to calibrate ``static-int8``."""
    per_channel: bool = False
    """``true``: quantize weights per output channel only. ``false``: the int8 recipe chosen for
    the device's architecture decides (per channel where that runs fastest); the result's
    compression record says which recipe was used."""
    pruning: Pruning | None = None
    """Magnitude pruning; omit for none."""


class Measure(_Spec):
    """How latency is measured on the device: warm-up, then at least N iterations and S seconds,
    split into rounds that alternate between the deployed model and the fp32 baseline."""

    warmup: int = Field(default=20, ge=0, le=100_000)
    """Untimed iterations before measuring."""
    min_iterations: int = Field(default=200, ge=1, le=10_000_000)
    """Timed iterations of each model, at least (over all rounds)."""
    min_seconds: float = Field(default=1.0, ge=0.0, le=3600.0)
    """Seconds of timed iterations of each model, at least (over all rounds)."""
    rounds: int = Field(default=7, ge=1, le=1000)
    """Interleaved rounds: in each, the deployed model and the fp32 baseline are timed in turn, so
    a change in the machine's speed hits both; the speed ratio's confidence interval is over rounds."""
    max_round_spread: float = Field(default=0.15, gt=0.0, le=100.0)
    """Largest acceptable spread of the per-round speed ratios, ``(max - min) / median``; beyond it
    the measurement is repeated, and marked ``unstable`` if it stays beyond."""
    max_remeasure: int = Field(default=2, ge=0, le=20)
    """How many times an unstable measurement is repeated before it is recorded as ``unstable``."""
    contention: bool = True
    """Also mark the measurement unstable (and repeat it) when the CPU was shared with other work
    while measuring: at least as many other runnable processes as the device has CPUs, or the
    measuring thread on a CPU less than 90% of the time (preempted, throttled by a CPU quota,
    or robbed by the hypervisor). Such rounds can agree with each other and still be wrong.
    ``false`` keeps only the check of the rounds' spread."""
    batch_size: int = Field(default=1, ge=1, le=4096)
    """Samples per inference call."""
    threads: int = Field(default=1, ge=1, le=256)
    """Intra-op threads of the runtime."""


class Gates(_Spec):
    """Limits a run must meet. A failed gate fails the run; its result is still written."""

    min_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    """Lowest acceptable top-1 accuracy on the test split."""
    max_accuracy_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    """Largest acceptable drop of accuracy against the uncompressed baseline (absolute, e.g. 0.01)."""
    max_latency_p50_ms: float | None = Field(default=None, gt=0.0)
    """Largest acceptable median latency in milliseconds."""
    max_latency_p95_ms: float | None = Field(default=None, gt=0.0)
    """Largest acceptable 95th-percentile latency in milliseconds."""
    max_latency_p99_ms: float | None = Field(default=None, gt=0.0)
    """Largest acceptable 99th-percentile latency in milliseconds."""
    max_model_bytes: int | None = Field(default=None, ge=1)
    """Largest acceptable size of the deployed model file in bytes."""
    max_peak_memory_mb: float | None = Field(default=None, gt=0.0)
    """Largest acceptable peak resident memory of the inference process, in MiB."""


class Resources(_Spec):
    """Limits for stage containers; the device file gives the defaults."""

    memory_mb: int | None = Field(default=None, ge=64, le=1_048_576)
    """Memory limit of each stage container in MiB."""
    cpus: float | None = Field(default=None, gt=0.0, le=1024)
    """CPU limit of each stage container."""


class RunSpec(_Spec):
    """One run: a model, a dataset, a compression and a device. With ``matrix``, a sweep of runs."""

    schema_: Literal[1] = Field(alias="schema")
    """Version of this file format. Always ``1``."""
    name: Name | None = None
    """Run name, unique in its project. Defaults to the file name without ``.yaml``."""
    description: Description = ""
    """Free text shown on the website, in email and in the PR comment: plain text, or Markdown
    with links to absolute http, https or mailto URLs only (no HTML, no images)."""
    model: ModelSource
    """The model to deploy."""
    dataset: DatasetSource
    """The dataset to calibrate, fine-tune and measure on."""
    compression: Compression = Compression()
    """Quantization and pruning."""
    device: Name = "host"
    """Name of a device in ``devices/<name>.yaml``."""
    runtime: Runtime = Runtime.onnxruntime
    """Inference runtime on the device: ``onnxruntime``, ``pytorch``, ``c`` (C99 generated from
    the static-int8 model: firmware on an ``mcu`` device, a host-compiled library elsewhere), or
    ``auto``: for ``static-int8`` on a device that is the runner machine, the compile stage times
    ONNX Runtime's recipes and the generated C side by side with the fp32 model and deploys the
    faster whose accuracy holds (``c`` on an ``mcu`` device; ``onnxruntime`` otherwise). The
    result's ``compression.runtime`` says which, and why."""
    pipeline: Name = "default"
    """Name of a pipeline in ``pipelines/<name>.yaml``; ``default`` is built in."""
    measure: Measure = Measure()
    """How latency is measured."""
    gates: Gates = Gates()
    """Limits the run must meet."""
    resources: Resources = Resources()
    """Memory and CPU limits for stage containers (override the device's)."""
    notify: list[str] = Field(default_factory=list, max_length=100)
    """Email addresses told when the run succeeds or fails: one plain address per entry
    (``name@example.com``, no display names or lists)."""
    matrix: (
        Annotated[
            dict[str, Annotated[list[Any], Field(min_length=1, max_length=100)]],
            Field(json_schema_extra=lambda schema: _matrix_key_schema(schema)),
        ]
        | None
    ) = None
    """A sweep: dotted field path -> list of values. One run per combination, named from the values."""

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _runtime_supports_quantization(self):
        if self.runtime is Runtime.pytorch and self.compression.quantization is Quantization.static_int8:
            raise LocatedError.at(
                ("compression", "quantization"),
                "runtime 'pytorch' does not support 'static-int8'",
                "use runtime 'onnxruntime' for static int8, or quantization 'dynamic-int8' or 'fp16' with pytorch",
            )
        if self.runtime is Runtime.c and self.compression.quantization is not Quantization.static_int8:
            raise LocatedError.at(
                ("runtime",),
                f"runtime 'c' runs static-int8 models only, not quantization '{self.compression.quantization.value}'",
                "set compression.quantization: static-int8, or use runtime 'onnxruntime'",
            )
        return self

    @field_validator("notify")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        bad = []
        for i, v in enumerate(value):
            problem = address_problem(v)
            if problem is not None:
                bad.append(((i,), f"{v!r} is not an email address: {problem[0]}", problem[1]))
        if bad:
            raise LocatedError(bad)
        return value


class DockerEndpoint(_Spec):
    """How to reach a Docker engine."""

    host: str | None = None
    """Docker host URL (``unix:///var/run/docker.sock``, ``ssh://user@board``, ``tcp://...``).
    Default: the environment's."""
    platform: str | None = None
    """Image platform for the device, e.g. ``linux/arm64``. Default: from ``arch``."""
    base_image: str = "python:3.11-slim"
    """Base image of the inference image built for the device. It must have Python 3.10+ and
    pip; use a local image when the device's engine cannot pull from a registry."""


class SshEndpoint(_Spec):
    """How to reach a Linux board over SSH."""

    host: str
    """Host name or address."""
    user: str = "root"
    """Login user."""
    port: int = Field(default=22, ge=1, le=65535)
    """SSH port."""
    python: str = "python3"
    """Python interpreter on the board; it needs ``tinymlaas-ci``, ``onnxruntime`` and ``numpy``
    (``pip install tinymlaas-ci onnxruntime numpy``)."""
    identity_file: str | None = None
    """Private key on the runner used to log in. Default: ssh's own configuration."""
    known_hosts: str | None = None
    """A known_hosts file on the runner holding the board's host key; the key is then checked
    strictly. Default: ssh's own configuration."""
    work_dir: str = ".tinymlaas"
    """Folder on the board, relative to the login's home, where run folders are kept."""


class _DeviceBase(_Spec):
    schema_: Literal[1] = Field(alias="schema")
    """Version of this file format. Always ``1``."""
    name: Name | None = None
    """Device name. Defaults to the file name without ``.yaml``."""
    description: Description = ""
    """Free text shown on the website: plain text, or Markdown with links to absolute http,
    https or mailto URLs only (no HTML, no images)."""
    arch: Annotated[
        Arch,
        WithJsonSchema({"type": "string", "enum": sorted({*ARCHES, *ARCH_ALIASES})}),
    ] = "amd64"
    """CPU architecture: ``amd64``, ``arm64``, ``armv7``, ``riscv64``, ``x86`` or ``other``; the names
    ``uname -m`` prints are accepted too (``x86_64`` is ``amd64``, ``aarch64`` is ``arm64``)."""
    runner: list[str] = Field(default_factory=lambda: ["self-hosted"], min_length=1)
    """Labels of the GitHub Actions runner attached to this device."""
    executor: Literal["docker", "local"] = Field(default="docker", exclude=True)
    """How the Run workflow runs stages on this device's runner: ``docker`` (sandboxed
    containers; the runner needs a Docker engine) or ``local`` (subprocesses on the runner, no
    sandbox: for runners without Docker that run only trusted models). Where stages run does
    not change what they produce, so it is not part of a run's spec hash."""
    memory_mb: int | None = Field(default=None, ge=1)
    """Memory of the device in MiB; also the default memory limit of stage containers."""
    storage_mb: int | None = Field(default=None, ge=1)
    """Storage of the device in MiB."""
    cpus: float | None = Field(default=None, gt=0)
    """CPUs available to stages on this device."""

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("arch", mode="before")
    @classmethod
    def _arch_alias(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        known = canonical_arch(value)
        if known is None:
            raise LocatedError.at((), f"{value!r} is not one of: {', '.join(ARCHES)}", arch_hint(value))
        return known


class LocalDevice(_DeviceBase):
    """The runner machine itself."""

    kind: Literal["local"]
    """``local``: inference runs on the machine that runs the runner."""


class DockerDevice(_DeviceBase):
    """Any Docker endpoint, local or remote (e.g. a board over ``ssh://``)."""

    kind: Literal["docker"]
    """``docker``: an inference image is built for the device and run on its engine."""
    docker: DockerEndpoint = DockerEndpoint()
    """How to reach the device's Docker engine."""


class SshDevice(_DeviceBase):
    """A Linux board reached over SSH with Python and ONNX Runtime installed."""

    kind: Literal["ssh"]
    """``ssh``: the bundle is copied over SSH and run there."""
    ssh: SshEndpoint
    """How to reach the board."""


MCU_BOARDS = ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547")
"""The Cortex-M board presets an ``mcu`` device can name (``devices/mcu/boards.py`` holds them)."""

McuBoard = Literal["mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547"]


class SerialPort(_Spec):
    """How the runner reaches a real board: its serial port and the command that flashes it."""

    port: str
    """Serial port of the board's UART on the runner, e.g. ``/dev/ttyACM0``."""
    baudrate: int = Field(default=115200, ge=1200, le=12_000_000)
    """Baud rate of the UART; the firmware is built for it."""
    flash_command: str | list[str] | None = None
    """Command that writes the firmware to the board, e.g. ``pyocd flash -t stm32f405rg {hex}``
    or ``openocd -f board/st_nucleo_f4.cfg -c "program {elf} verify reset exit"``. ``{elf}``,
    ``{bin}`` and ``{hex}`` are replaced by the image's paths. Omit when the board is flashed by
    hand before the run."""


class McuDevice(_DeviceBase):
    """A Cortex-M microcontroller: emulated by QEMU on the runner, or a real board on its serial port.

    Runs need ``runtime: c`` (with ``compression.quantization: static-int8``). Install builds
    the firmware within ``flash_kb``/``ram_kb``; infer streams the test split through the board.
    Both run on the runner, where the board is emulated or attached.
    """

    kind: Literal["mcu"]
    """``mcu``: the model is compiled to C, linked into firmware and run on a microcontroller."""
    board: McuBoard
    """Board preset: ``mps2-an386`` (Cortex-M4F), ``mps2-an500`` (Cortex-M7), ``mps2-an505``
    (Cortex-M33) or ``mps3-an547`` (Cortex-M55 with Helium). It sets the core, the compiler flags,
    the memory map and the kernels (DSP dual MACs, MVE)."""
    flash_kb: int | None = Field(default=None, ge=1, le=65536)
    """Flash budget in KiB that the linker script enforces (code + weights). Default: the
    preset's typical part (1 MiB on Cortex-M4/M33, 2 MiB on M7/M55)."""
    ram_kb: int | None = Field(default=None, ge=1, le=65536)
    """RAM budget in KiB that the linker script enforces (arena + variables + stack). Default:
    the preset's typical part (192 KiB on M4, 256 KiB on M33, 512 KiB on M7/M55)."""
    clock_mhz: float | None = Field(default=None, gt=0, le=10_000)
    """Core clock in MHz, for ``latency_ms_estimate`` (instructions / clock). Default: the
    preset's FPGA clock."""
    transport: Literal["qemu", "serial"] = "qemu"
    """``qemu``: the board is emulated on the runner (exact instruction counts); ``serial``: a
    real board on the runner's serial port (``serial``), flashed with its ``flash_command``."""
    serial: SerialPort | None = None
    """The real board's serial port and flash command; required with ``transport: serial``."""
    stack_bytes: int = Field(default=8192, ge=1024, le=1_048_576, multiple_of=8)
    """Stack reserved in RAM by the linker script; the measured high-water is reported."""
    arch: Arch = "other"
    """CPU architecture family; a microcontroller is ``other`` (the board gives the core)."""

    @model_validator(mode="after")
    def _serial_given(self):
        if self.transport == "serial" and self.serial is None:
            raise LocatedError.at(
                ("transport",),
                "transport 'serial' needs the board's serial port",
                "add 'serial: {port: /dev/ttyACM0, flash_command: ...}', or use transport 'qemu'",
            )
        return self


DeviceSpec = Annotated[LocalDevice | DockerDevice | SshDevice | McuDevice, Field(discriminator="kind")]

BUILTIN_STAGES = ("fetch", "compile", "install", "infer")


class StageSpec(_Spec):
    """One stage of a pipeline: a built-in stage, or a command of your own."""

    name: Name
    """Stage name, unique in the pipeline; its folder in the run volume."""
    builtin: Literal["fetch", "compile", "install", "infer"] | None = None
    """A built-in stage."""
    command: list[str] | None = Field(default=None, min_length=1)
    """Your own stage: the command to run. ``{run}`` is replaced by the run volume path."""
    image: str | None = None
    """Docker image for the stage, or a folder with a ``Dockerfile`` (``pipelines/images/<name>``)."""
    needs: list[Name] = Field(default_factory=list)
    """Stages that must finish before this one."""
    network: bool = False
    """Give the stage container network access (fetch needs it)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Extra parameters, passed to the stage in ``stage.json``."""

    @model_validator(mode="after")
    def _one_kind(self):
        if self.builtin is not None and self.command is not None:
            raise LocatedError.at(
                ("command",),
                "a stage has either 'builtin' or 'command', not both",
                "remove 'command' to use the built-in stage, or 'builtin' to run your own command",
            )
        if self.builtin is None and self.command is None:
            raise LocatedError.at(
                (),
                f"stage {self.name!r} has neither 'builtin' nor 'command'",
                "add 'builtin' with one of fetch, compile, install, infer; or 'command' to run your own",
            )
        return self


class PipelineSpec(_Spec):
    """A small graph of stages. The built-in ``default`` is fetch -> compile -> install -> infer."""

    schema_: Literal[1] = Field(alias="schema")
    """Version of this file format. Always ``1``."""
    name: Name | None = None
    """Pipeline name. Defaults to the file name without ``.yaml``."""
    description: Description = ""
    """Free text: plain text, or Markdown with links to absolute http, https or mailto URLs only."""
    stages: list[StageSpec] = Field(min_length=1, max_length=64)
    """The stages, in any order; ``needs`` gives the graph."""

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _graph(self):
        problems: list[tuple[tuple, str, str | None]] = []
        first: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            if stage.name in first:
                problems.append(
                    (
                        ("stages", i, "name"),
                        f"stage name {stage.name!r} is used twice, also by stages[{first[stage.name]}]",
                        "give every stage its own name",
                    )
                )
            else:
                first[stage.name] = i
        names = list(first)
        for i, stage in enumerate(self.stages):
            for j, need in enumerate(stage.needs):
                if need not in first:
                    problems.append(
                        (
                            ("stages", i, "needs", j),
                            f"stage {stage.name!r} needs unknown stage {need!r}",
                            suggest(need, names) or f"stages: {', '.join(names)}",
                        )
                    )
        if problems:
            raise LocatedError(problems)
        try:
            self._sorter().prepare()
        except graphlib.CycleError as exc:
            # graphlib lists the cycle from need to user; the message follows 'needs', starting
            # at the stage written first in the file.
            cycle = list(reversed(exc.args[1]))[:-1]
            start = min(range(len(cycle)), key=lambda k: first[cycle[k]])
            walk = cycle[start:] + cycle[:start] + [cycle[start]]
            raise LocatedError.at(
                ("stages", first[walk[0]], "needs"),
                "the stages' 'needs' form a cycle: " + " -> ".join(walk),
                "remove one of these 'needs' so that the stages can run in order",
            ) from None
        return self

    def _sorter(self) -> graphlib.TopologicalSorter:
        return graphlib.TopologicalSorter({s.name: s.needs for s in self.stages})

    def order(self) -> list[StageSpec]:
        """Stages in a deterministic topological order (file order among equals)."""
        index = {s.name: i for i, s in enumerate(self.stages)}
        sorter = self._sorter()
        sorter.prepare()
        ready: list[str] = []
        done: list[StageSpec] = []
        while sorter.is_active():
            ready += sorter.get_ready()
            ready.sort(key=index.__getitem__)
            name = ready.pop(0)
            done.append(self.stages[index[name]])
            sorter.done(name)
        return done


DEFAULT_PIPELINE = PipelineSpec.model_validate(
    {
        "schema": 1,
        "name": "default",
        "description": "fetch -> compile -> install -> infer",
        "stages": [
            {"name": "fetch", "builtin": "fetch", "network": True},
            {"name": "compile", "builtin": "compile", "needs": ["fetch"]},
            {"name": "install", "builtin": "install", "needs": ["compile"]},
            {"name": "infer", "builtin": "infer", "needs": ["install"]},
        ],
    }
)
