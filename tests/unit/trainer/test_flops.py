"""Training FLOPs per token (PaLM appendix B), device peaks and MFU, against hand counts."""

from __future__ import annotations

import pytest
from transformers import BertConfig, LlamaConfig

from kubetune_trainer.flops import (
    Throughput,
    ThroughputCounts,
    device_peak,
    layer_parameters,
    model_flops_utilization,
    per_token_parameters,
    shape_from_config,
    step_throughput,
    training_flops_per_token,
)

BERT_BASE = BertConfig()  # 12 layers, 768 hidden, 3072 intermediate, 12 heads
TINYLLAMA = LlamaConfig(  # the TinyLlama-1.1B shape
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
)


def test_bert_base_layer_and_token_parameters_are_counted_by_hand() -> None:
    shape = shape_from_config(BERT_BASE, causal_lm=False)
    # Q, K, V, O: 4 x 768^2 = 2,359,296; MLP: 2 x 768 x 3072 = 4,718,592.
    assert layer_parameters(shape) == 7_077_888
    assert per_token_parameters(shape) == 12 * 7_077_888  # embeddings are lookups


def test_bert_base_flops_per_token_at_128_tokens() -> None:
    shape = shape_from_config(BERT_BASE, causal_lm=False)
    dense = 6 * 84_934_656  # 509,607,936
    attention = 12 * 12 * 768 * 128  # 14,155,776
    head = 6 * (768 * 768 + 768 * 2) / 128  # pooler + classifier, once per sequence: 27,720
    assert training_flops_per_token(shape, 128) == dense + attention + head == 523_791_432


def test_a_llama_1b_counts_grouped_query_attention_gated_mlp_and_the_lm_head() -> None:
    shape = shape_from_config(TINYLLAMA, causal_lm=True)
    assert (shape.kv_heads, shape.head_dim, shape.gated_mlp) == (4, 64, True)
    # Q and O: 2 x 2048^2 = 8,388,608; K and V: 2 x 2048 x 256 = 1,048,576;
    # MLP: 3 x 2048 x 5632 = 34,603,008.
    assert layer_parameters(shape) == 44_040_192
    # 22 layers + the LM head 2048 x 32000 = 65,536,000.
    assert per_token_parameters(shape) == 968_884_224 + 65_536_000
    attention = 12 * 22 * 2048 * 2048  # 1,107,296,256
    assert training_flops_per_token(shape, 2048) == 6 * 1_034_420_224 + attention


def test_the_count_equals_the_linear_weights_of_the_real_model() -> None:
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(TINYLLAMA)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert linear == per_token_parameters(shape_from_config(TINYLLAMA, causal_lm=True))


def test_gpt2_style_names_are_read() -> None:
    from transformers import GPT2Config

    shape = shape_from_config(GPT2Config(n_embd=64, n_layer=3, n_head=4), causal_lm=True)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads) == (3, 64, 256, 4)
    assert not shape.gated_mlp


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.5),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.5),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
    ],
)
def test_device_peaks_by_the_names_torch_reports(name: str, tflops: float) -> None:
    peak = device_peak(name)
    assert peak is not None
    assert peak.bf16_flops == pytest.approx(tflops * 1e12)


def test_an_unknown_device_has_no_peak() -> None:
    assert device_peak("cpu") is None


def test_mfu_of_a_1b_model_on_an_h100() -> None:
    flops_per_token = training_flops_per_token(shape_from_config(TINYLLAMA, causal_lm=True), 2048)
    # 60,000 tokens/s x 7.3138e9 FLOPs = 438.8 TFLOP/s of 989.5: 44.35%.
    mfu = model_flops_utilization(60_000, flops_per_token, 989.5e12)
    assert mfu == pytest.approx(0.44349, abs=1e-5)
    assert model_flops_utilization(120_000, flops_per_token, 989.5e12, devices=2) == mfu


def test_mfu_refuses_a_zero_peak() -> None:
    with pytest.raises(ValueError, match="positive"):
        model_flops_utilization(1.0, 1.0, 0.0)


def test_step_throughput_of_a_window_on_four_a100s() -> None:
    throughput = step_throughput(
        samples=2_400,
        tokens=624_000,
        seconds=10.0,
        flops_per_token=8e9,
        peak_flops=312e12,
        devices=4,
    )
    # 62,400 tokens/s x 8e9 FLOPs = 4.992e14 FLOP/s of 4 x 312e12 = 1.248e15.
    assert throughput.samples_per_second == 240.0
    assert throughput.tokens_per_second == 62_400.0
    assert throughput.mfu == pytest.approx(0.4, rel=1e-12)


@pytest.mark.parametrize(("peak", "devices"), [(None, 4), (312e12, 0)])
def test_step_throughput_has_no_mfu_without_a_peak_or_a_gpu(
    peak: float | None, devices: int
) -> None:
    throughput = step_throughput(2_400, 624_000, 10.0, 8e9, peak, devices)
    assert throughput == Throughput(240.0, 62_400.0, None)


def test_window_counts_weigh_each_batch_at_its_own_width() -> None:
    shape = shape_from_config(BERT_BASE, causal_lm=False)
    counts = ThroughputCounts(seconds=2.0)
    counts.add_batch(16, 128, shape)  # 2,048 tokens of 523,791,432 FLOPs (hand count above)
    counts.add_batch(16, 64, shape)  # 1,024 tokens of 509,607,936 + 7,077,888 + 55,440
    flops = 2_048 * 523_791_432 + 1_024 * 516_741_264  # 1,601,867,907,072
    assert (counts.samples, counts.tokens, counts.model_flops) == (32, 3_072, flops)
    # Two processes alike on two A100s: twice the counts in the same 2 s on twice the peak.
    throughput = counts.throughput(processes=2, peak_flops=312e12, devices=2)
    assert (throughput.samples_per_second, throughput.tokens_per_second) == (32.0, 3_072.0)
    assert throughput.mfu == pytest.approx(1_601_867_907_072 / 624e12, rel=1e-12)


def test_window_counts_without_a_shape_count_tokens_but_no_flops() -> None:
    counts = ThroughputCounts(seconds=0.5)
    counts.add_batch(8, 24, None)
    counts.add(ThroughputCounts(samples=8, tokens=8 * 40, seconds=0.5))
    assert (counts.samples, counts.tokens, counts.model_flops) == (16, 512, 0.0)
    assert counts.throughput(processes=1, peak_flops=None, devices=0) == Throughput(
        16.0, 512.0, None
    )
