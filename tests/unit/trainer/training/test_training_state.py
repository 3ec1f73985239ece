"""The training state's records: the curves of logged steps and the best evaluation."""

from __future__ import annotations

from kubetune_trainer.training.training_state import TrainingState


def test_a_logged_step_adds_its_points_to_the_curves() -> None:
    state = TrainingState(step=4)
    state.record_log(0.5, 1e-3, {"head": 2.0})
    state.step = 8
    state.record_log(0.25, 5e-4, None)
    assert state.train_losses == [[4, 0.5], [8, 0.25]]
    assert state.learning_rates == [[4, 1e-3], [8, 5e-4]]
    assert state.layer_grad_norms == [[4, {"head": 2.0}]]


def test_the_best_evaluation_names_its_checkpoint_and_patience_counts_the_rest() -> None:
    state = TrainingState(step=10)
    state.track_best("accuracy", 0.8, 0.0)
    state.step = 20
    state.track_best("accuracy", 0.805, 0.01)  # better, but not by minDelta
    state.step = 30
    state.track_best("accuracy", 0.7, 0.0)
    assert state.best_metric == 0.8
    assert state.best_checkpoint == "step-00000010"
    assert state.evaluations_without_improvement == 2
    state.step = 40
    state.track_best("accuracy", 0.9, 0.01)
    assert state.best_checkpoint == "step-00000040"
    assert state.evaluations_without_improvement == 0


def test_the_state_round_trips_through_its_dict() -> None:
    state = TrainingState(epoch=2, step=30, best_metric=0.5, gpu_hours=1.25)
    restored = TrainingState()
    restored.load_state_dict(state.state_dict())
    assert restored == state
