"""Model FLOPs per trained token, dense bf16 peaks by device, and model FLOPs utilization.

MFU (model FLOPs utilization) is the share of the device's dense peak that the *model's*
arithmetic would use at the measured throughput. It counts the FLOPs the model needs, not
the ones the hardware did (recomputation under gradient checkpointing does not count), so
it compares recipes and devices honestly; the benchmark (bench/gpu_throughput.py) and
docs/performance.md report it.

The count is the one of the PaLM paper (Chowdhery et al. 2022, appendix B), also used by
Chinchilla (Hoffmann et al. 2022, appendix F, which counts the same matmuls in more
detail). Training one token costs

    6 * N  +  12 * L * (H * Q) * T

where N is the number of parameters that take part in a matrix multiply for that token
(every weight of every layer, plus the language-model head; the embedding tables are
lookups and cost nothing), L the layers, H * Q the attention width (heads x head size)
and T the sequence length. 6 = 2 (multiply and add) x 3 (forward, and a backward pass
twice as expensive); 12 * L * H * Q * T is QK^T and the attention-weighted values, forward
and backward. As in PaLM, causal attention is counted whole, not halved for its mask, so
the figures compare with the published ones. Biases, norms, softmax and activations are
left out (well under 1% for these sizes).

A sequence classifier's pooler and classification head see one token per sequence: they
are counted once per sequence, spread over its T tokens.

The trainer reports tokens/s and MFU at every logged step (`step_throughput`). It counts
the FLOPs of each batch at that batch's own padded width rather than at data.maxLength:
attention FLOPs grow with the width, and batches padded to their longest row are often
much narrower than the limit. Padding is counted as tokens, since the model computes on it.

With LoRA or frozen layers the 6 * N overstates the work: the backward pass of a frozen
weight computes no weight gradient (about 4 * N rather than 6 * N for a fully frozen base).
The standard formula is kept all the same, as the field reports MFU, so figures compare.

No torch here: the bench and the tests compute the numbers from a config alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GATED_MLP_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"}
)
"""Architectures whose MLP is gated (SwiGLU / GeGLU: gate, up and down projections)."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a transformer that its training FLOPs depend on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool
    causal_lm: bool
    """True: a language-model head over every token; False: a pooler and classifier on one
    token per sequence."""
    num_labels: int = 2
    """Classes of a sequence classifier's head."""

    @property
    def attention_width(self) -> int:
        """Heads x head size: the width of queries (and of the attention's output)."""
        return self.heads * self.head_dim


def shape_from_config(config: Any, *, causal_lm: bool) -> ModelShape:
    """The shape of a transformers config (BERT, GPT-2, Llama, Qwen2 and their kin)."""
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    heads = _first(config, "num_attention_heads", "n_head")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return ModelShape(
        layers=_first(config, "num_hidden_layers", "n_layer"),
        hidden=hidden,
        intermediate=int(intermediate or 4 * hidden),
        heads=heads,
        kv_heads=int(kv_heads),
        head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
        vocab=_first(config, "vocab_size"),
        gated_mlp=getattr(config, "model_type", "") in GATED_MLP_MODEL_TYPES,
        causal_lm=causal_lm,
        num_labels=int(getattr(config, "num_labels", 2)),
    )


def _first(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"the {type(config).__name__} has none of {', '.join(names)}")


def layer_parameters(shape: ModelShape) -> int:
    """Matmul weights of one transformer layer: attention projections and the MLP."""
    query_and_output = 2 * shape.hidden * shape.attention_width
    keys_and_values = 2 * shape.hidden * shape.kv_heads * shape.head_dim
    mlp_matrices = 3 if shape.gated_mlp else 2
    return query_and_output + keys_and_values + mlp_matrices * shape.hidden * shape.intermediate


def per_token_parameters(shape: ModelShape) -> int:
    """N of the formula: the weights every token is multiplied by (for a causal LM, the
    layers and the LM head; for a classifier, the layers)."""
    head = shape.hidden * shape.vocab if shape.causal_lm else 0
    return shape.layers * layer_parameters(shape) + head


def classifier_head_parameters(shape: ModelShape) -> int:
    """A sequence classifier's pooler (hidden x hidden) and output layer, used once per sequence."""
    return 0 if shape.causal_lm else shape.hidden * shape.hidden + shape.hidden * shape.num_labels


def training_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Forward and backward FLOPs per token of a sequence of `seq_len` tokens."""
    dense = 6 * per_token_parameters(shape)
    attention = 12 * shape.layers * shape.attention_width * seq_len
    head = 6 * classifier_head_parameters(shape) / seq_len
    return float(dense + attention + head)


@dataclass(frozen=True)
class DevicePeak:
    """A device's dense (no sparsity) bf16 tensor-core peak, from its vendor's datasheet."""

    name_parts: tuple[str, ...]
    """Every one of these appears in torch.cuda.get_device_name() (case-insensitive)."""
    bf16_flops: float
    datasheet: str


# Ordered from the most specific name to the least: "H100 PCIe" before "H100", "A100"
# before "A10", "L40S" before "L4". Datasheets give bf16 "with sparsity"; these are the
# dense figures (half of those).
DEVICE_PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak(("h100", "pcie"), 756e12, "NVIDIA H100 datasheet, H100 PCIe: 1,513 TFLOPS sparse"),
    DevicePeak(("h100", "nvl"), 835e12, "NVIDIA H100 datasheet, H100 NVL: 1,671 TFLOPS sparse"),
    DevicePeak(("h100",), 989.5e12, "NVIDIA H100 datasheet, H100 SXM: 1,979 TFLOPS sparse"),
    DevicePeak(("h200", "nvl"), 835e12, "NVIDIA H200 datasheet, H200 NVL: 1,671 TFLOPS sparse"),
    DevicePeak(("h200",), 989.5e12, "NVIDIA H200 datasheet, H200 SXM: 1,979 TFLOPS sparse"),
    DevicePeak(("a100",), 312e12, "NVIDIA A100 datasheet: 312 TFLOPS dense (SXM and PCIe)"),
    DevicePeak(("l40s",), 362.05e12, "NVIDIA L40S datasheet: 362.05 TFLOPS dense"),
    DevicePeak(("l4",), 121e12, "NVIDIA L4 datasheet: 242 TFLOPS sparse"),
    DevicePeak(("a10",), 125e12, "NVIDIA A10 datasheet: 125 TFLOPS dense"),
)


def device_peak(device_name: str) -> DevicePeak | None:
    """The peak of the device torch names `device_name`, or None for one not in the table."""
    name = device_name.lower()
    for peak in DEVICE_PEAKS:
        if all(part in name for part in peak.name_parts):
            return peak
    return None


def model_flops_utilization(
    tokens_per_second: float, flops_per_token: float, peak_flops: float, devices: int = 1
) -> float:
    """Achieved model FLOPs over the peak of `devices` devices, 0 to 1 (ideally)."""
    if peak_flops <= 0 or devices <= 0:
        raise ValueError("the peak and the number of devices must be positive")
    return tokens_per_second * flops_per_token / (peak_flops * devices)


@dataclass(frozen=True)
class Throughput:
    """A logging window's speed, all processes together."""

    samples_per_second: float
    tokens_per_second: float
    """Tokens the model processed per second, padding included."""
    mfu: float | None
    """Model FLOPs utilization, 0 to 1; None without a known peak (a CPU, an unknown GPU)."""


def step_throughput(
    samples: int,
    tokens: int,
    seconds: float,
    flops_per_token: float,
    peak_flops: float | None,
    devices: int,
) -> Throughput:
    """Samples/s, tokens/s and MFU of `samples` sequences of `tokens` tokens in `seconds`;
    `flops_per_token` is the mean over those tokens (see `batch_training_flops`)."""
    tokens_per_second = tokens / seconds
    mfu = (
        None
        if peak_flops is None or devices <= 0
        else model_flops_utilization(tokens_per_second, flops_per_token, peak_flops, devices)
    )
    return Throughput(samples / seconds, tokens_per_second, mfu)


def batch_training_flops(shape: ModelShape, rows: int, width: int) -> float:
    """Training FLOPs of a batch of `rows` sequences padded to `width` tokens. Summed over a
    window and divided by its tokens, it gives the window's exact mean FLOPs per token, with
    each batch's attention counted at its own width."""
    return rows * width * training_flops_per_token(shape, width)


@dataclass
class ThroughputCounts:
    """What one process trained on over a window (between two logged steps, or a whole run),
    counted on the host from the batches' shapes, so counting never waits for the device."""

    samples: int = 0
    tokens: int = 0
    """Padding included."""
    model_flops: float = 0.0
    """0 when the model's shape is not counted (no peak to compare with)."""
    seconds: float = 0.0

    def add_batch(self, rows: int, width: int, shape: ModelShape | None) -> None:
        self.samples += rows
        self.tokens += rows * width
        if shape is not None:
            self.model_flops += batch_training_flops(shape, rows, width)

    def add(self, other: ThroughputCounts) -> None:
        self.samples += other.samples
        self.tokens += other.tokens
        self.model_flops += other.model_flops
        self.seconds += other.seconds

    def throughput(self, processes: int, peak_flops: float | None, devices: int) -> Throughput:
        """The speed of all `processes` together. Each process counts only its own batches,
        so they are taken to train alike (the same batch size, widths that differ little)."""
        return step_throughput(
            self.samples * processes,
            self.tokens * processes,
            max(self.seconds, 1e-9),
            self.model_flops / max(self.tokens, 1),
            peak_flops,
            devices,
        )
