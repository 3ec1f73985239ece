"""model_export.py on tiny models trained a few steps: the adapter in model/ on its base and
the merged model in merged/ compute the same logits as the model that was trained, a failed
save leaves no result behind, and QLoRA's quantized bases (bitsandbytes' CPU backend)
export a plain merged model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from kubetune_trainer.__main__ import run_training
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.modeling import (
    ModelError,
    base_model_reference,
    load_base_model,
    load_model,
    model_path,
)
from kubetune_trainer.training.model_export import ModelExport, export_model, run_export
from tests.tiny import make_tiny_causal_lm, make_tiny_model

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"]
LABELS = ["a", "b", "c"]


def causal_config(model: Path, **lora: Any) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "task": "causal-lm"},
            "data": {"train": {"source": "unused.csv"}},
            "training": {"lora": {"rank": 4, "dropout": 0.0, **lora}},
            "output": {"mergeAdapter": True},
        },
        by_name=False,
    )


def classifier_config(model: Path) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "labels": LABELS},
            "data": {"train": {"source": "unused.csv"}},
            "training": {"lora": {"rank": 4, "dropout": 0.0, "targetModules": ["query"]}},
            "output": {"mergeAdapter": True},
        },
        by_name=False,
    )


def batch(model_dir: Path, causal: bool) -> dict[str, torch.Tensor]:
    encoded = AutoTokenizer.from_pretrained(model_dir)(TEXTS, padding=True, return_tensors="pt")
    labels = encoded["input_ids"] if causal else torch.tensor([0, 1, 2])
    return {**encoded, "labels": labels}


def train_a_little(model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Five steps at a high rate: LoRA's B matrices start at zero and must move."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=5e-2)
    model.train()
    for _ in range(5):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def export(config: TrainingConfig, out: Path, model: nn.Module, labels: list[str]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(config.model.source)
    export_model(run_export(config, out, tokenizer, labels, lambda: None), model)


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        result: torch.Tensor = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
    return result


def test_a_lora_run_saves_its_adapter_and_a_merged_model_with_the_same_logits(
    tmp_path: Path,
) -> None:
    from peft import PeftModel

    base_dir = make_tiny_causal_lm(tmp_path / "base", TEXTS)
    config = causal_config(base_dir)
    inputs = batch(base_dir, causal=True)
    model = load_model(config, [])
    train_a_little(model, inputs)
    export(config, tmp_path / "out", model, [])

    adapter_dir, merged_dir = tmp_path / "out/model", tmp_path / "out/merged"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["merged", "model"]
    files = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir)

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    before = logits(base, inputs)
    with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    trained = logits(model, inputs)
    assert not torch.allclose(trained, before, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(logits(with_adapter, inputs), trained, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(merged, inputs), trained, atol=1e-4, rtol=0)
    assert AutoTokenizer.from_pretrained(merged_dir).eos_token == "[SEP]"


def test_a_classifier_adapter_carries_its_fully_trained_head(tmp_path: Path) -> None:
    from peft import PeftModel

    base_dir = make_tiny_model(tmp_path / "base", TEXTS, num_labels=2)
    config = classifier_config(base_dir)
    inputs = batch(base_dir, causal=False)
    model = load_model(config, LABELS)
    train_a_little(model, inputs)
    export(config, tmp_path / "out", model, LABELS)

    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=3, ignore_mismatched_sizes=True
    )
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "out/model").eval()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out/merged").eval()
    assert merged.config.id2label == dict(enumerate(LABELS))
    trained = logits(model, inputs)
    torch.testing.assert_close(logits(with_adapter, inputs), trained, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(merged, inputs), trained, atol=1e-4, rtol=0)


def test_a_killed_save_leaves_no_merged_model_and_later_saves_clean_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir = make_tiny_causal_lm(tmp_path / "base", TEXTS)
    config = causal_config(base_dir)
    model = load_model(config, [])
    save_pretrained = PreTrainedModel.save_pretrained

    def killed_after_the_weights(self: PreTrainedModel, path: Path, **options: Any) -> None:
        save_pretrained(self, path, **options)
        raise KeyboardInterrupt

    def base_whose_save_is_killed() -> PreTrainedModel:
        monkeypatch.setattr(PreTrainedModel, "save_pretrained", killed_after_the_weights)
        return load_base_model(config, [])

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    killed = ModelExport(
        tmp_path / "out", tokenizer, base_model_reference(config), base_whose_save_is_killed
    )
    with pytest.raises(KeyboardInterrupt):
        export_model(killed, model)
    assert (tmp_path / "out/.partial-merged/model.safetensors").is_file()  # half-written
    assert not (tmp_path / "out/merged").exists()
    monkeypatch.undo()
    export(config, tmp_path / "out", model, [])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["merged", "model"]
    unmerged = ModelExport(tmp_path / "out", tokenizer, base_model_reference(config), None)
    export_model(unmerged, model)  # a later save without mergeAdapter: no stale merged/
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]


def test_an_adapter_names_a_hub_base_by_its_repository_and_revision() -> None:
    config = TrainingConfig.model_validate(
        {
            "model": {"source": "hf://org/name@v1", "task": "causal-lm"},
            "data": {"train": {"source": "unused.csv"}},
            "training": {"lora": {}},
        },
        by_name=False,
    )
    assert base_model_reference(config) == ("org/name", "v1")


def test_an_adapter_directory_as_model_source_is_refused_with_what_to_use(
    tmp_path: Path,
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model/adapter_config.json").write_text("{}")
    config = causal_config(tmp_path / "model")
    with pytest.raises(ModelError, match=r"^model\.source: .* holds a LoRA adapter.*merged/"):
        model_path(config)


@pytest.mark.parametrize(
    "bits",
    [
        "4bit",
        pytest.param(
            "8bit",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="8bit needs CUDA"),
        ),
    ],
)
def test_qlora_trains_on_a_quantized_base_and_merges_into_a_plain_one(
    tmp_path: Path, bits: str
) -> None:
    from peft import PeftModel

    base_dir = make_tiny_causal_lm(tmp_path / "base", TEXTS)
    config = causal_config(base_dir, quantization=bits)
    inputs = batch(base_dir, causal=True)
    model = load_model(config, [])
    quantized = {type(m).__name__ for m in model.modules()}
    assert ("Linear4bit" if bits == "4bit" else "Linear8bitLt") in quantized
    train_a_little(model, inputs)
    export(config, tmp_path / "out", model, [])

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out/merged").eval()
    assert getattr(merged.config, "quantization_config", None) is None
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "out/model").eval()
    expected = logits(with_adapter, inputs)
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-4, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only without CUDA")
def test_8bit_without_a_gpu_is_refused_naming_the_field(tmp_path: Path) -> None:
    base_dir = make_tiny_causal_lm(tmp_path / "base", TEXTS)
    config = causal_config(base_dir, quantization="8bit")
    refusal = r"^training\.lora\.quantization: 8bit needs a CUDA GPU"
    with pytest.raises(ModelError, match=refusal):  # before the data (unused.csv) is read
        run_training(config, tmp_path / "out", job_name="test", env={})
    with pytest.raises(ModelError, match=refusal):
        load_model(config, [])


def test_quantization_without_bitsandbytes_names_the_field_and_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir = make_tiny_causal_lm(tmp_path / "base", TEXTS)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if absent
    with pytest.raises(
        ModelError, match=r"^training\.lora\.quantization: 4bit .*kubetune\[qlora\]"
    ):
        load_model(causal_config(base_dir, quantization="4bit"), [])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_qlora_loads_nf4_onto_this_device_and_exports(tmp_path: Path) -> None:
    base_dir = make_tiny_causal_lm(tmp_path / "base", TEXTS)
    config = causal_config(base_dir, quantization="4bit")
    model = load_model(config, [])
    layer = next(m for m in model.modules() if type(m).__name__ == "Linear4bit")
    assert layer.weight.device.type == "cuda"
    assert layer.weight.quant_type == "nf4"
    inputs = {k: v.cuda() for k, v in batch(base_dir, causal=True).items()}
    train_a_little(model, inputs)
    export(config, tmp_path / "out", model, [])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out/merged").cuda().eval()
    assert torch.isfinite(logits(merged, inputs)).all()
