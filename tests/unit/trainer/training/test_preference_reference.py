"""Where a dpo run's reference comes from: the LoRA model with its adapters off (no second
copy), or log-probabilities computed once in setup and carried with the rows."""

from __future__ import annotations

import gc
from pathlib import Path

import datasets
import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from kubetune_trainer.config import PreferenceSpec, TrainingConfig
from kubetune_trainer.data import IGNORED_LABEL, REFERENCE_COLUMNS, PreferenceCollator
from kubetune_trainer.modeling import load_model
from kubetune_trainer.training.preference_loss import pair_log_probs
from kubetune_trainer.training.preferences import PreferenceObjective, with_reference_columns
from kubetune_trainer.training.token_losses import token_losses
from tests.tiny import make_tiny_causal_lm

WORDS = [f"w{i}" for i in range(12)]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("reference") / "gpt", WORDS)


def preference_rows() -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "chosen_input_ids": [[5, 6, 7, 3], [8, 9, 3], [5, 10, 11, 12, 3]],
            "chosen_labels": [[-100, 6, 7, 3], [-100, 9, 3], [-100, -100, 11, 12, 3]],
            "rejected_input_ids": [[5, 6, 8, 9, 3], [8, 5, 3], [5, 10, 6, 3]],
            "rejected_labels": [[-100, 6, 8, 9, 3], [-100, 5, 3], [-100, -100, 6, 3]],
            "length": [5, 3, 5],
        }
    )


def batch_of(rows: datasets.Dataset) -> dict[str, torch.Tensor]:
    columns = [column for column in rows.column_names if column != "length"]
    return PreferenceCollator(0)(list(rows.select_columns(columns)))


def lora_model(path: Path) -> torch.nn.Module:
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(path), "task": "causal-lm"},
            "data": {"train": {"source": "unused.csv"}},
            "training": {"objective": "dpo", "lora": {"rank": 4}},
        },
        by_name=False,
    )
    model = load_model(config, [])
    with torch.no_grad():  # LoRA's B starts at zero: move it so the adapters change the model
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model


def models_in_memory() -> int:
    gc.collect()
    return sum(isinstance(thing, GPT2LMHeadModel) for thing in gc.get_objects())


def test_with_lora_the_reference_is_the_base_model_with_adapters_off(tiny_lm: Path) -> None:
    model = lora_model(tiny_lm)
    model.train()
    batch = batch_of(preference_rows())
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    before = models_in_memory()
    objective = PreferenceObjective(PreferenceSpec(), Accelerator(cpu=True), "adapters")
    reference = objective._without_adapters(model, inputs, batch["labels"])
    loss = objective.loss(model, batch)
    assert models_in_memory() == before  # no copy of the model was made
    assert model.training  # the reference pass left the mode as it found it
    base = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    with torch.no_grad():
        expected = pair_log_probs(*token_losses(base(**inputs).logits, batch["labels"]))
    torch.testing.assert_close(reference.chosen, expected.chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(reference.rejected, expected.rejected, atol=1e-5, rtol=0)
    with torch.no_grad():
        policy = pair_log_probs(*token_losses(model(**inputs).logits, batch["labels"]))
    assert not torch.allclose(policy.chosen, expected.chosen, atol=1e-3)
    loss.backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained
    assert all("lora_" in name for name in trained)


def test_without_lora_the_reference_is_computed_once_and_carried_with_the_rows(
    tiny_lm: Path,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    model.train()
    accelerator = Accelerator(cpu=True)
    rows = with_reference_columns(model, preference_rows(), accelerator, PreferenceCollator(0), 2)
    assert model.training
    batch = batch_of(rows)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    # Under the run's autocast, as the reference pass and the prepared model's forward are.
    with torch.no_grad(), accelerator.autocast():
        expected = pair_log_probs(*token_losses(model.eval()(**inputs).logits, batch["labels"]))
    chosen, rejected = REFERENCE_COLUMNS
    assert rows[chosen] == pytest.approx(expected.chosen.tolist(), abs=1e-5)
    assert rows[rejected] == pytest.approx(expected.rejected.tolist(), abs=1e-5)
    objective = PreferenceObjective(PreferenceSpec(), accelerator, "rows")
    with accelerator.autocast():
        loss = objective.loss(model, batch)  # the starting model is its own reference
    assert float(loss) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert objective.close_log_window()["rewardMargin"] == pytest.approx(0.0, abs=1e-5)
    assert (batch["labels"] == IGNORED_LABEL).any()
