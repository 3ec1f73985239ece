"""The preference losses of training.objective dpo, and the implicit rewards they imply.

DPO (Rafailov et al. 2023) needs no reward model: the policy's log-probability of a
response, less the reference model's, times beta, is its implicit reward, and the loss
asks the chosen response's reward to beat the rejected one's. A row's log-probability is
the sum over its response tokens (the prompt and padding carry IGNORED_LABEL); IPO (Azar
et al. 2023) regresses the per-token average of the same ratios onto 1 / (2 beta), as TRL
does, so that beta means the same whatever the responses' lengths. Label smoothing is
robust DPO's (Chowdhury et al. 2024): an unbiased loss when each preference is flipped
with that probability, which TRL names "robust" and which is plain DPO at 0. With sftWeight,
the chosen responses' negative log-likelihood joins the loss (RPO, Pang et al. 2024): plain
DPO may lower the chosen answer's probability too, as long as the rejected one's falls
faster, and greedy decoding then writes neither.

SimPO (Meng et al. 2024) needs no reference at all: its reward is beta times the policy's
mean log-probability per response token, and the loss asks the chosen reward to beat the
rejected one by a margin gamma, as TRL's CPOTrainer computes it with loss_type simpo.

tests/unit/trainer/training/test_preference_loss.py checks the losses, the rewards and the
log-probabilities against TRL's own DPOTrainer and CPOTrainer on the same model and batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from kubetune_trainer.config import PreferenceSpec

CHOSEN_REWARD = "chosenReward"
REJECTED_REWARD = "rejectedReward"
REWARD_MARGIN = "rewardMargin"
REWARD_ACCURACY = "rewardAccuracy"
REWARD_METRICS = (CHOSEN_REWARD, REJECTED_REWARD, REWARD_MARGIN, REWARD_ACCURACY)
"""The metric names of a preference run besides its loss, as config.PREFERENCE_METRICS has them."""


@dataclass(frozen=True)
class PairLogProbs:
    """Per row of a preference batch: the summed log-probabilities of its chosen and
    rejected responses, and how many tokens each has."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


@dataclass(frozen=True)
class PairRewards:
    """Per row: beta * (policy - reference) log-probability of each response (detached)."""

    chosen: torch.Tensor
    rejected: torch.Tensor

    def per_row(self) -> dict[str, torch.Tensor]:
        """Each reward metric per row: means over rows make the logged and validation values."""
        return {
            CHOSEN_REWARD: self.chosen,
            REJECTED_REWARD: self.rejected,
            REWARD_MARGIN: self.chosen - self.rejected,
            REWARD_ACCURACY: (self.chosen > self.rejected).float(),
        }


def pair_log_probs(losses: torch.Tensor, counts: torch.Tensor) -> PairLogProbs:
    """The log-probabilities of a batch whose first half holds the rows' chosen responses
    and second half their rejected ones (data/preferences.py collates them so), from each
    row's summed token loss and token count (training/token_losses.py)."""
    chosen, rejected = (-losses).chunk(2)
    chosen_tokens, rejected_tokens = counts.chunk(2)
    return PairLogProbs(chosen, rejected, chosen_tokens, rejected_tokens)


def preference_losses(
    policy: PairLogProbs,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    spec: PreferenceSpec,
) -> tuple[torch.Tensor, PairRewards]:
    """Each row's loss and rewards, against the reference's summed log-probabilities of the
    same responses (the batch's loss is the mean)."""
    chosen_ratio = policy.chosen - reference_chosen
    rejected_ratio = policy.rejected - reference_rejected
    if spec.loss == "ipo":
        per_row = _ipo(chosen_ratio, rejected_ratio, policy, spec.beta)
    else:
        per_row = _sigmoid(spec.beta * (chosen_ratio - rejected_ratio), spec.label_smoothing)
    rewards = PairRewards(spec.beta * chosen_ratio.detach(), spec.beta * rejected_ratio.detach())
    return _with_chosen_likelihood(per_row, policy, spec), rewards


def simpo_losses(policy: PairLogProbs, spec: PreferenceSpec) -> tuple[torch.Tensor, PairRewards]:
    """Each row's SimPO loss and rewards: -log sigmoid(beta * (mean chosen log-prob - mean
    rejected log-prob) - gamma), the means per response token."""
    chosen = policy.chosen / policy.chosen_tokens.clamp_min(1)
    rejected = policy.rejected / policy.rejected_tokens.clamp_min(1)
    per_row = -F.logsigmoid(spec.beta * (chosen - rejected) - spec.gamma)
    rewards = PairRewards(spec.beta * chosen.detach(), spec.beta * rejected.detach())
    return _with_chosen_likelihood(per_row, policy, spec), rewards


def _with_chosen_likelihood(
    per_row: torch.Tensor, policy: PairLogProbs, spec: PreferenceSpec
) -> torch.Tensor:
    """Each row's loss plus sftWeight x the batch's mean negative log-likelihood per chosen
    token (one number for the batch, as TRL's sft loss term computes it)."""
    if spec.sft_weight == 0:
        return per_row
    nll = -policy.chosen.sum() / policy.chosen_tokens.sum().clamp_min(1)
    return per_row + spec.sft_weight * nll


def _sigmoid(logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """-log sigmoid of the reward margin; with smoothing e, robust DPO's
    ((1 - e) * -log sigmoid(m) - e * -log sigmoid(-m)) / (1 - 2e)."""
    if smoothing == 0:
        return -F.logsigmoid(logits)
    kept = -(1 - smoothing) * F.logsigmoid(logits)
    flipped = -smoothing * F.logsigmoid(-logits)
    return (kept - flipped) / (1 - 2 * smoothing)


def _ipo(
    chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, policy: PairLogProbs, beta: float
) -> torch.Tensor:
    """(per-token chosen ratio - per-token rejected ratio - 1 / (2 beta)) squared."""
    chosen = chosen_ratio / policy.chosen_tokens.clamp_min(1)
    rejected = rejected_ratio / policy.rejected_tokens.clamp_min(1)
    return (chosen - rejected - 1 / (2 * beta)) ** 2
