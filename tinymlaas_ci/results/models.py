"""The result file: one JSON per run, committed to ``runs/<project>/results/<run>.json``.

Results are facts. They are written atomically with sorted keys, carry ``schema: 1``, and are
never overwritten silently by a result of a different spec: history is git history.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "RESULT_SCHEMA",
    "CompressionRecord",
    "CountSummary",
    "DatasetInput",
    "DeviceRecord",
    "ErrorRecord",
    "FlashBytes",
    "GateVerdict",
    "Inputs",
    "IntegerOps",
    "Latency",
    "MemoryMap",
    "Metrics",
    "ModelInput",
    "RamBytes",
    "Result",
    "RunIdentity",
    "RuntimeRecord",
    "StageRecord",
]

RESULT_SCHEMA = 1


class _Rec(BaseModel):
    # Readers tolerate keys added by newer writers; writers only write known keys.
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, populate_by_name=True)


class RunIdentity(_Rec):
    project: str
    """Project: the folder under ``runs/``."""
    name: str
    """Run name, unique in the project."""
    spec_file: str
    """Spec file, relative to the repository root."""
    spec_hash: str
    """sha256 of the expanded spec, its device and pipeline, and the digests of its uploads."""
    spec_commit: str | None = None
    """Git commit of the repository when the run was made."""
    pipeline: str = "default"
    """Pipeline that ran."""
    matrix: dict[str, Any] = Field(default_factory=dict)
    """The sweep values of this run, when it came from a ``matrix``."""
    actions_run_url: str | None = None
    """The GitHub Actions run that produced this result, when known."""


class ModelInput(_Rec):
    kind: Literal["upload", "huggingface"]
    """Where the model came from."""
    path: str | None = None
    """Upload path in the repository."""
    repo: str | None = None
    """Hugging Face repository id."""
    revision: str | None = None
    """Revision asked for."""
    commit: str | None = None
    """Hugging Face commit sha the revision resolved to."""
    file: str | None = None
    """File inside the Hugging Face repository."""
    sha256: str
    """sha256 of the model file."""
    bytes: int
    """Size of the model file."""
    format: str
    """Detected model format."""
    parameters: int | None = None
    """Number of parameters, when known."""


class DatasetInput(_Rec):
    kind: Literal["upload", "huggingface"]
    path: str | None = None
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    sha256: str
    """sha256 of the archive (uploads) or of the downloaded files (Hub)."""
    format: str
    """Detected layout: ``imagefolder``, ``parquet``, ``csv`` or ``numpy``."""
    splits: dict[str, int]
    """Samples per split."""
    labels: list[str]
    """Class labels, in index order."""
    eval_split: str
    """The split inference was measured on."""


class Inputs(_Rec):
    model: ModelInput
    dataset: DatasetInput


class IntegerOps(_Rec):
    """How many of the model's Conv/Gemm/MatMul nodes run as integer kernels."""

    integer: int
    """Nodes that run as integer kernels (``QLinearConv``, ``QGemm``, ``MatMulInteger``, ...) after
    ONNX Runtime's graph optimizer."""
    total: int
    """All Conv/Gemm/MatMul nodes of the optimized graph, integer or float."""


class CompressionRecord(_Rec):
    quantization: str
    """Quantization mode applied."""
    per_channel: bool = False
    calibration_samples: int | None = None
    """Samples actually used for calibration."""
    target_sparsity: float | None = None
    achieved_sparsity: float | None = None
    """Fraction of zero weights in prunable layers after pruning."""
    fine_tune_epochs: int | None = None
    ops_quantized: dict[str, int] = Field(default_factory=dict)
    """Count of quantized operators by type in the deployed graph."""
    baseline_bytes: int | None = None
    """Size of the uncompressed ONNX baseline."""
    compressed_bytes: int | None = None
    """Size of the compressed model."""
    integer_ops: IntegerOps | None = None
    """Conv/Gemm/MatMul nodes that run as integer kernels, counted in the graph ONNX Runtime
    optimized on the compile machine (``9 of 9``: fully quantized; ``3 of 9``: six layers run in
    fp32 behind DequantizeLinear). None for runtime ``pytorch``."""
    recipe: str | None = None
    """How the model was quantized: ``qdq-u8s8-per-channel`` (uint8 activations, int8 weights, one
    scale per output channel), ``qdq-s8s8-per-channel``, ``dynamic-matmul-gemm``, ``fp16-keep-io-fp32``..."""
    recipe_reason: str | None = None
    """Why this recipe: the architecture's default, or the fastest of the timed candidates whose
    accuracy held."""
    recipe_candidates: list[dict[str, Any]] = Field(default_factory=list)
    """The static-int8 recipes tried side by side: ``recipe``, ``speedup_vs_fp32``,
    ``accuracy_drop``, ``holds``, ``integer_ops``, ``kept``, and ``ci95_vs_default``: the 95%
    interval of its speed against the default (the architecture's default recipe when its
    accuracy holds, else the fastest that holds), which it must clear by ``SWITCH_MARGIN`` to
    replace it. With ``runtime: auto`` a candidate of another runtime has ``runtime`` (``c``),
    and its ``ci95_vs_default`` is against ONNX Runtime's chosen recipe. Empty when none were
    timed."""
    layout: list[str] = Field(default_factory=list)
    """Rewrites made before quantizing so ONNX Runtime's channels-last integer kernels need no
    Transposes around them (one line each, e.g. an input with one channel reshaped instead of
    transposed); the outputs are unchanged. Empty when none applied or none paid off."""
    runtime: str | None = None
    """The runtime the model was compiled for: the spec's, or the one ``runtime: auto`` chose
    (``onnxruntime`` or ``c``)."""
    runtime_reason: str | None = None
    """``runtime: auto`` only: why that runtime, with the timings it was chosen on."""
    fp16_native: bool | None = None
    """fp16 only: whether the device's CPU computes in fp16 (avx512fp16/amx-fp16, asimdhp/fphp);
    False means ONNX Runtime runs the model through Casts and fp32 kernels. None: unknown."""


class DeviceRecord(_Rec):
    name: str
    kind: str
    arch: str
    cpu_model: str | None = None
    isa_flags: list[str] = Field(default_factory=list)
    """CPU flags relevant to inference speed (avx2, avx512*, neon, ...)."""
    cpu_count: int | None = None
    memory_mb: int | None = None
    os: str | None = None


class RuntimeRecord(_Rec):
    name: str
    version: str
    threads: int = 1
    providers: list[str] = Field(default_factory=list)


class Latency(_Rec):
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    iterations: int
    """Timed iterations."""
    seconds: float
    """Wall time of the timed iterations."""
    warmup: int


class CountSummary(_Rec):
    """Median, minimum and maximum of a per-inference value over ``n`` inferences."""

    median: float
    min: float
    max: float
    n: int
    """Inferences counted."""


class FlashBytes(_Rec):
    """Flash use of a microcontroller firmware, read from the linked image."""

    model: int
    """The model's code and constant data (weights, biases, requantization constants)."""
    firmware: int
    """Everything the image puts in flash: vectors, startup, UART protocol, libc, the model."""
    budget: int
    """The device's ``flash_kb`` budget in bytes, which the linker script enforces."""


class RamBytes(_Rec):
    """RAM use of a microcontroller firmware: static data from the image, the stack measured."""

    total: int
    """``static`` + ``stack_high_water``: the RAM the firmware needs."""
    static: int
    """.data + .bss: the tensor arena, buffers and variables."""
    stack_high_water: int
    """Deepest stack use measured on the board over the whole run (a painted stack)."""
    stack_before_inference: int | None = None
    """Stack high-water of the firmware alone, before the first inference."""
    stack_reserved: int | None = None
    """Stack the linker script reserves (``stack_bytes`` of the device)."""
    budget: int
    """The device's ``ram_kb`` budget in bytes, which the linker script enforces."""


class MemoryMap(_Rec):
    """Where the firmware sits on the board: the linker script's regions and the image's sections."""

    regions: list[dict[str, Any]] = Field(default_factory=list)
    """``name``, ``origin`` (hex), ``length`` (the budget) and ``used`` bytes of each region."""
    sections: list[dict[str, Any]] = Field(default_factory=list)
    """``name``, ``address`` (hex), ``size`` and ``region`` of each allocated section."""


class Metrics(_Rec):
    accuracy: float
    """Top-1 accuracy over the whole evaluation split, measured on the device."""
    top5_accuracy: float | None = None
    """Top-5 accuracy, when there are more than 5 classes."""
    baseline_accuracy: float | None = None
    """Accuracy of the uncompressed baseline on the same split and device."""
    accuracy_drop: float | None = None
    """``baseline_accuracy - accuracy``."""
    samples: int
    """Samples evaluated."""
    latency_ms: Latency
    """Latency per inference call in milliseconds."""
    batch_size: int
    throughput_per_s: float
    """Samples per second at ``batch_size``."""
    model_size_bytes: int
    """Bytes of the deployed model file."""
    model_gzip_bytes: int
    """Bytes of the deployed model file after gzip -9 (shows what pruning saves)."""
    baseline_model_bytes: int | None = None
    compression_ratio: float | None = None
    """``baseline_model_bytes / model_size_bytes``."""
    peak_memory_mb: float | None = None
    """Peak resident memory of the inference process in MiB."""
    load_time_ms: float | None = None
    """Time to load the model into the runtime."""
    baseline_latency_ms: Latency | None = None
    """Latency of the fp32 baseline, measured in the same process, interleaved with the deployed model."""
    speedup_vs_baseline: float | None = None
    """Baseline p50 / deployed p50 (each the median of the per-round medians); above 1: faster."""
    speedup_ci95: list[float] | None = None
    """``[low, high]``: 95% confidence interval of ``speedup_vs_baseline``, a paired bootstrap over rounds."""
    rounds: int | None = None
    """Interleaved measurement rounds (deployed and baseline timed in turn in each)."""
    round_ratios: list[float] = Field(default_factory=list)
    """The speed ratio of each round."""
    round_spread: float | None = None
    """``(max - min) / median`` of the per-round ratios (relative; 0.05 = rounds within 5%)."""
    load_before: float | None = None
    """1-minute load average of the device before measuring."""
    load_after: float | None = None
    """1-minute load average of the device after measuring."""
    cpu_share: float | None = None
    """CPU time / wall time of the measuring thread over the timed calls (1.0: it never had to
    leave the CPU; less: preempted by other work, throttled by a CPU quota, or hypervisor steal)."""
    runnable_others: float | None = None
    """Median number of other runnable processes on the device while measuring (Linux)."""
    cpus: int | None = None
    """Logical CPUs of the device, to read ``runnable_others`` against."""
    unstable: bool = False
    """The speed numbers are not to be trusted for ranking, even after re-measuring: the rounds
    disagreed by more than ``measure.max_round_spread``, or the CPU was shared with other work
    while measuring (``measure.contention``). ``unstable_reason`` says which."""
    unstable_reason: str | None = None
    """Why the measurement is ``unstable``, e.g. ``rounds disagree: ...`` or ``the CPU was shared
    with other work: 2 other runnable processes on 2 CPUs``."""
    remeasured: int = 0
    """Extra measurement attempts made because the rounds disagreed."""
    labels: list[str] = Field(default_factory=list)
    """Label names by model output index: the label order the accuracy was scored with."""
    label_source: str | None = None
    """Where the label order came from: ``dataset.labels``, the model's metadata (``config.json
    id2label``, ``fastai vocab``), the dataset's class names, or folder names (integers, or
    ``folders (sorted names, assumed)``)."""
    preprocess: dict[str, Any] | None = None
    """The preprocessing applied to every sample (channels, resize, scale, mean, std, layout) and
    where each field came from (``source``: spec, model or default)."""
    input_layout: str | None = None
    """``nchw`` or ``nhwc``: the model's input axis order."""
    confusion_matrix: list[list[int]] = Field(default_factory=list)
    """Rows: true label, columns: predicted label."""
    latency_source: Literal["measured", "instructions", "cycles"] | None = None
    """How ``latency_ms`` was obtained. Absent or ``measured``: wall-clock time of each call on
    the device. ``instructions``: an ESTIMATE, the exact instruction count of each inference on
    an emulated microcontroller divided by the clock (QEMU has no timing model). ``cycles``: the
    core's cycle counter on a real microcontroller divided by the clock."""

    @property
    def latency_is_estimate(self) -> bool:
        """True when ``latency_ms`` is an estimate (instruction count / clock), not a measurement:
        every table and card that shows it says so."""
        return self.latency_source == "instructions"

    agreement_with_onnxruntime: float | None = None
    """``runtime: c``: share of predictions equal to ONNX Runtime's on the same int8 model and
    inputs (1.0: every prediction agrees)."""
    board: str | None = None
    """``mcu`` devices: the board preset the firmware was built for and run on."""
    flash_bytes: FlashBytes | None = None
    """``mcu`` devices: flash used by the model and the whole firmware, against the budget."""
    weights_bytes: int | None = None
    """``runtime: c``: bytes of the model's int8 weights and int32 biases (in flash)."""
    arena_bytes: int | None = None
    """``runtime: c``: bytes of the static tensor arena (in RAM), planned from tensor lifetimes."""
    ram_bytes: RamBytes | None = None
    """``mcu`` devices: static RAM plus the measured stack high-water, against the budget."""
    macs: int | None = None
    """``runtime: c``: multiply-accumulates per inference."""
    instructions_per_inference: CountSummary | None = None
    """``mcu`` devices under QEMU: exact instructions executed per inference (between two
    markers around the model call), over every sample of the split."""
    instructions_per_mac: float | None = None
    """``instructions_per_inference.median / macs``: how well the kernels use the core."""
    cycles_per_inference: CountSummary | None = None
    """``mcu`` devices on a real board: DWT cycles per inference."""
    latency_ms_estimate: CountSummary | None = None
    """``mcu`` devices: instructions per inference divided by ``clock_mhz``, in ms. An ESTIMATE:
    one instruction is not one cycle on a real core, and the emulator has no memory wait states."""
    clock_mhz: float | None = None
    """``mcu`` devices: the core clock the estimate assumes (the device's ``clock_mhz``)."""
    memory_map: MemoryMap | None = None
    """``mcu`` devices: the firmware's memory regions and sections."""


class GateVerdict(_Rec):
    gate: str
    limit: float
    value: float | None
    passed: bool
    message: str


class StageRecord(_Rec):
    name: str
    status: Literal["pending", "running", "generated", "failed", "skipped"]
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    cache_key: str | None = None
    cache_hit: bool = False
    executor: str | None = None
    image: str | None = None
    image_digest: str | None = None


class ErrorRecord(_Rec):
    stage: str | None = None
    message: str


class Result(_Rec):
    schema_: Literal[1] = Field(default=1, alias="schema")
    run: RunIdentity
    status: Literal["succeeded", "failed", "gates-failed"]
    """``succeeded``; ``gates-failed`` when the run completed but a gate failed; ``failed`` otherwise."""
    created_at: str
    """UTC time the result was written (ISO 8601)."""
    spec: dict[str, Any]
    """The expanded run spec."""
    inputs: Inputs | None = None
    compression: CompressionRecord | None = None
    device: DeviceRecord | None = None
    runtime: RuntimeRecord | None = None
    metrics: Metrics | None = None
    gates: list[GateVerdict] = Field(default_factory=list)
    stages: list[StageRecord] = Field(default_factory=list)
    error: ErrorRecord | None = None
    tools: dict[str, str] = Field(default_factory=dict)
    """Versions of the tools used (tinymlaas_ci, python, torch, onnx, onnxruntime, numpy)."""

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)
