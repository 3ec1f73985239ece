"""The DPO and SimPO losses, rewards and log-probabilities equal TRL's on the same tiny model
and batch: TRL's own code (DPOTrainer's `_compute_loss`, CPOTrainer's `get_batch_logps` and
`cpo_loss`) is the reference, not a re-implementation of it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kubetune_trainer.config import PreferenceSpec
from kubetune_trainer.data import IGNORED_LABEL
from kubetune_trainer.training.preference_loss import (
    pair_log_probs,
    preference_losses,
    simpo_losses,
)
from kubetune_trainer.training.token_losses import token_losses
from tests.tiny import make_tiny_causal_lm

trl = pytest.importorskip("trl")

WORDS = [f"w{i}" for i in range(20)] + ["good", "bad"]
ROWS = {
    "prompt": ["w1 w2", "w3 w4 w5", "w6", "w7 w8 w9 w10"],
    "chosen": [" w7 good", " w8 good", " good", " w11 w12 good"],
    "rejected": [" w9 bad w3", " bad", " w1 w2 bad", " bad w13"],
}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("dpo") / "gpt", WORDS)


def trl_trainer(path: Path, tmp: Path, **args: Any) -> Any:
    """TRL's DPOTrainer on the tiny model (its own frozen reference copy), the policy
    nudged off the reference so that the rewards are not all zero."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # fp32, as the trainer's CPU runs: the accelerate state TRL's trainer sets up is shared
    # by every Accelerator the process makes later, and refuses another precision.
    precision = {"bf16": False, "fp16": False}
    config = trl.DPOConfig(
        output_dir=str(tmp), report_to=[], use_cpu=True, max_length=None, **precision, **args
    )
    trainer = trl.DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path),
        args=config,
        train_dataset=Dataset.from_dict(ROWS),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return trainer


def trl_and_ours(
    path: Path, tmp: Path, spec: PreferenceSpec, loss_type: str
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, dict[str, float]]:
    losses: dict[str, Any] = {"loss_type": [loss_type]}
    if spec.sft_weight:
        losses = {"loss_type": [loss_type, "sft"], "loss_weights": [1.0, spec.sft_weight]}
    trainer = trl_trainer(path, tmp, beta=spec.beta, label_smoothing=spec.label_smoothing, **losses)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS["prompt"]))])
    trainer.model.train()
    theirs = trainer._compute_loss(trainer.model, batch, False)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORED_LABEL)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    policy = pair_log_probs(*token_losses(trainer.model(**inputs).logits, labels))
    with torch.no_grad():
        reference = pair_log_probs(*token_losses(trainer.ref_model(**inputs).logits, labels))
    losses, rewards = preference_losses(policy, reference.chosen, reference.rejected, spec)
    ours = losses.mean()
    ours_metrics = {
        "rewards/chosen": float(rewards.chosen.mean()),
        "rewards/rejected": float(rewards.rejected.mean()),
        "rewards/margins": float((rewards.chosen - rewards.rejected).mean()),
        "rewards/accuracies": float((rewards.chosen > rewards.rejected).float().mean()),
        "logps/chosen": float(policy.chosen.detach().mean()),
        "logps/rejected": float(policy.rejected.detach().mean()),
    }
    return theirs, metrics, ours, ours_metrics


@pytest.mark.parametrize(
    ("spec", "loss_type"),
    [
        (PreferenceSpec(beta=0.1), "sigmoid"),
        (PreferenceSpec(beta=0.5, loss="ipo"), "ipo"),
        (PreferenceSpec(beta=0.2, label_smoothing=0.2), "robust"),
        (PreferenceSpec(beta=0.1, sft_weight=0.7), "sigmoid"),
    ],
    ids=["sigmoid", "ipo", "label-smoothing", "sft-weight"],
)
def test_loss_rewards_and_log_probs_equal_trl(
    tiny_lm: Path, tmp_path: Path, spec: PreferenceSpec, loss_type: str
) -> None:
    theirs, their_metrics, ours, our_metrics = trl_and_ours(tiny_lm, tmp_path, spec, loss_type)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-5)
    for name, value in our_metrics.items():
        assert value == pytest.approx(their_metrics[name], abs=1e-5), name
    assert abs(our_metrics["rewards/margins"]) > 1e-3  # the policy did move off the reference
    ours.backward()  # the loss is differentiable through the policy's log-probabilities


def test_simpo_loss_rewards_and_mean_log_probs_equal_trls_cpo_trainer(
    tiny_lm: Path, tmp_path: Path
) -> None:
    from trl.experimental.cpo import CPOTrainer

    trainer = trl_trainer(tiny_lm, tmp_path, beta=2.0, loss_type=["sigmoid"])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS["prompt"]))])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORED_LABEL)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        logits = trainer.model(**inputs).logits
    spec = PreferenceSpec(beta=2.0, gamma=0.7)
    policy = pair_log_probs(*token_losses(logits, labels))
    losses, rewards = simpo_losses(policy, spec)
    their_means = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    their_chosen, their_rejected = their_means.chunk(2)
    torch.testing.assert_close(
        policy.chosen / policy.chosen_tokens, their_chosen, atol=1e-5, rtol=0
    )
    cpo = SimpleNamespace(  # the attributes cpo_loss reads from a CPOTrainer with loss_type simpo
        alpha=0.0,
        beta=spec.beta,
        loss_type="simpo",
        simpo_gamma=spec.gamma,
        label_smoothing=0.0,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    their_losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(
        cpo, their_chosen, their_rejected
    )
    torch.testing.assert_close(losses, their_losses, atol=1e-5, rtol=0)
    torch.testing.assert_close(rewards.chosen, chosen_rewards, atol=1e-5, rtol=0)
    torch.testing.assert_close(rewards.rejected, rejected_rewards, atol=1e-5, rtol=0)
