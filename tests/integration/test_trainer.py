"""The recipe end to end on CPU with a tiny BERT: real training, real files, real numbers."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kubetune_trainer.__main__ import run_training
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.training.losses import classification_loss, l1_penalty
from kubetune_trainer.training.recipe import Recipe, RunResult


def make_config(model: Path, data: tuple[Path, Path], **sections: Any) -> TrainingConfig:
    base: dict[str, Any] = {
        "model": {"source": str(model), "labels": ["negative", "positive"]},
        "data": {
            "train": {"source": str(data[0])},
            "validation": {"source": str(data[1])},
            "sensitiveColumns": ["dialect"],
            "maxLength": 32,
        },
        "training": {"epochs": 3, "batchSize": 16, "learningRate": 5e-3, "seed": 3},
    }
    for name, fields in sections.items():
        base[name] = {**base.get(name, {}), **fields}
    return TrainingConfig.model_validate(base, by_name=False)


def train(config: TrainingConfig, output: Path) -> RunResult:
    return run_training(config, output, job_name="test", env={})


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "model" / "model.safetensors")


def test_class_weighted_loss_equals_a_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.5], [0.1, 0.3], [1.0, -1.0]])
    labels = torch.tensor([0, 1, 1])
    class_weights = torch.tensor([1.0, 3.0])
    row_weights = torch.tensor([1.0, 0.5, 2.0])
    ce = [-torch.log_softmax(logits[i], 0)[labels[i]].item() for i in range(3)]
    w = [1.0 * 1.0, 3.0 * 0.5, 3.0 * 2.0]
    expected = sum(wi * ci for wi, ci in zip(w, ce, strict=True)) / sum(w)
    loss = classification_loss(logits, labels, class_weights=class_weights, row_weights=row_weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, labels).item() == pytest.approx(sum(ce) / 3, rel=1e-6)


def test_l1_penalty_is_the_sum_of_absolute_values() -> None:
    a, b = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([[-0.5]]))
    assert l1_penalty([a, b]).item() == pytest.approx(3.5)


def test_a_run_writes_a_loadable_model_and_a_full_report(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = train(make_config(tiny_model_dir, small_data), tmp_path)
    assert result.succeeded
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"] == 60  # 320 rows / 16 per batch x 3 epochs
    assert [e["step"] for e in report["curves"]["evaluations"]] == [20, 40, 60]
    assert len(report["curves"]["trainLoss"]) == 60
    assert report["data"]["rows"]["train_in"] == 320
    assert report["bestMetrics"]["accuracy"] > report["data"]["majorityRate"]
    assert report["diagnosis"]["verdict"] in ("Healthy", "Overfitting", "Underfitting")
    assert set(report["versions"]) >= {"python", "torch", "transformers", "accelerate"}
    assert report["cost"] == {"gpuHours": 0.0}  # a CPU run holds no GPU
    # One batch per logged step: tokens over samples is its width, its longest row on a CPU.
    widths = {e["tokensPerSecond"] / e["samplesPerSecond"] for e in step_events(tmp_path)}
    assert all(width == pytest.approx(round(width), rel=1e-12) for width in widths)
    assert {round(width) % 8 for width in widths} != {0}  # not rounded up to a multiple of 8
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert len(tokenizer("proper good")["input_ids"]) == 4
    checkpoints = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert checkpoints == {"step-00000040", "step-00000060", report["bestCheckpoint"]}


def step_events(output: Path) -> list[dict[str, Any]]:
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == "step"]


def test_the_training_side_of_the_gap_is_the_same_however_often_the_run_evaluates(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    from transformers import AutoModelForSequenceClassification

    from kubetune_trainer.data import prepare_data
    from kubetune_trainer.modeling import load_tokenizer
    from kubetune_trainer.training.loaders import training_sample

    every_ten, at_the_end = (
        make_config(
            tiny_model_dir,
            small_data,
            training={"epochs": 1},
            evaluation={"strategy": "steps", "everySteps": every},
        )
        for every in (10, 1000)
    )
    often, once = train(every_ten, tmp_path / "often"), train(at_the_end, tmp_path / "once")
    evaluations = [r.report["curves"]["evaluations"] for r in (often, once)]
    assert [[e["step"] for e in runs] for runs in evaluations] == [[10, 20], [20]]
    last_often, last_once = evaluations[0][-1]["trainMetrics"], evaluations[1][-1]["trainMetrics"]
    assert last_often.keys() == last_once.keys() >= {"accuracy", "loss", "rocAuc"}
    assert last_often == pytest.approx(last_once, abs=1e-6)
    # Independently: the last step's weights, in eval mode, on the seeded training sample.
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model.load_state_dict(load_file(tmp_path / "often/checkpoints/step-00000020/model.safetensors"))
    sample = training_sample(prepare_data(every_ten, load_tokenizer(every_ten)), seed=3)
    assert len(sample) == 80  # as many as the validation rows
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [model(input_ids=torch.tensor([ids])).logits for ids in sample["input_ids"]]
        )
    labels = torch.tensor(sample["labels"][:])
    accuracy = (logits.argmax(dim=-1) == labels).double().mean().item()
    assert last_often["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert last_often["loss"] == pytest.approx(loss, rel=1e-4)


def test_tokens_per_second_count_the_padded_width_and_a_cpu_has_no_mfu(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    """maxLength 8 truncates every row to at most 8 tokens and batches pad to a multiple of
    8: every batch is 8 wide, so tokens/s is exactly 8 x samples/s at each logged step."""
    config = make_config(tiny_model_dir, small_data, training={"epochs": 1})
    config = config.model_copy(update={"data": config.data.model_copy(update={"max_length": 8})})
    result = train(config, tmp_path)
    steps = step_events(tmp_path)
    assert len(steps) == 20  # 320 rows / 16, each step logged
    for event in steps:
        assert event["tokensPerSecond"] == pytest.approx(8 * event["samplesPerSecond"], rel=1e-12)
        assert event["mfu"] is None
    throughput = result.report["throughput"]
    assert throughput["mfu"] is None
    rates = [event["tokensPerSecond"] for event in steps]
    assert min(rates) <= throughput["tokensPerSecond"] <= max(rates)  # all tokens / all seconds


def test_frozen_embeddings_are_bit_identical_and_the_rest_moves(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        freezing={"freezeEmbeddings": True, "freezeLayers": 1},
        training={"epochs": 1},
    )
    train(config, tmp_path)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = weights(tmp_path)
    for name, tensor in after.items():
        if name.startswith("classifier"):
            continue  # the head is created for the labels: no "before" to compare
        frozen = "embeddings" in name or ".layer.0." in name
        assert torch.equal(tensor, before[name]) == frozen, name


def test_gradual_unfreezing_is_logged_per_epoch(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        training={"epochs": 3},
        freezing={"gradualUnfreezing": {"every": 1}, "layerwiseLrDecay": 0.5},
    )
    result = train(config, tmp_path)
    log = result.report["freezing"]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    assert log[0]["trainable"] == ["head"]
    assert log[1]["trainable"] == ["block 1", "head"]
    assert log[2]["trainable"] == ["block 0", "block 1", "head"]
    assert log[2]["frozen"] == ["embeddings"]
    rates = log[2]["learningRates"]
    assert rates["block 0"] / rates["head"] == pytest.approx(0.25)
    rates = result.report["curves"]["learningRate"]
    assert [step for step, _ in rates] == [step for step, _ in result.report["curves"]["trainLoss"]]
    values = [rate for _, rate in rates]  # linear decay from 5e-3, no warmup
    assert values == sorted(values, reverse=True)
    assert values[0] < 5e-3
    assert values[-1] == 0.0
    norms = result.report["curves"]["layerGradNorms"]
    assert [step for step, _ in norms] == [step for step, _ in result.report["curves"]["trainLoss"]]
    done_before = [entry["step"] for entry in log]  # steps done when each epoch's plan began
    for step, by_group in norms:
        trained = log[sum(done < step for done in done_before) - 1]["trainable"]
        assert by_group["embeddings"] == 0.0
        assert (by_group["block 0"] > 0) == ("block 0" in trained)
        assert by_group["head"] > 0


def test_gradual_unfreezing_by_steps_is_logged_where_each_group_is_released(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        training={"epochs": 1},  # 20 steps
        freezing={"gradualUnfreezing": {"every": 5, "unit": "steps"}},
    )
    result = train(config, tmp_path)
    log = result.report["freezing"]
    assert [(entry["epoch"], entry["step"]) for entry in log] == [(1, 0), (1, 5), (1, 10), (1, 15)]
    assert [entry["trainable"] for entry in log] == [
        ["head"],
        ["block 1", "head"],
        ["block 0", "block 1", "head"],
        ["embeddings", "block 0", "block 1", "head"],
    ]
    for step, by_group in result.report["curves"]["layerGradNorms"]:
        trained = log[sum(entry["step"] < step for entry in log) - 1]["trainable"]
        assert (by_group["block 0"] > 0) == ("block 0" in trained), step


def test_l1_shrinks_the_weights(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    plain = make_config(tiny_model_dir, small_data, training={"epochs": 1})
    sparse = make_config(
        tiny_model_dir, small_data, training={"epochs": 1}, regularization={"l1": 1e-3}
    )
    train(plain, tmp_path / "plain")
    train(sparse, tmp_path / "l1")

    def mass(output: Path) -> float:
        return sum(
            t.abs().sum().item()
            for n, t in weights(output).items()
            if n.endswith("weight") and t.ndim == 2
        )

    assert mass(tmp_path / "l1") < 0.97 * mass(tmp_path / "plain")


class SimulatedCrashError(Exception):
    pass


class CrashingRecipe(Recipe):
    """Dies right after the checkpoint of a given step, like a killed pod."""

    crash_after = 0

    def save_checkpoint(self) -> Path:
        path = super().save_checkpoint()
        if self.state.step == self.crash_after:
            raise SimulatedCrashError
        return path


def crash_then_resume(
    config: TrainingConfig, output: Path, job_name: str, crash_after: int
) -> tuple[Path | None, RunResult]:
    """Train until the checkpoint of step `crash_after` and die there, then start again in
    the same folder: where the new start resumed from, and its result."""
    crashing = CrashingRecipe(config, output, job_name=job_name, env={})
    crashing.crash_after = crash_after
    crashing.setup()
    with pytest.raises(SimulatedCrashError):
        crashing.train()
    crashing.cleanup()
    resumed = Recipe(config, output, job_name=job_name, env={})
    resumed.setup()
    result = resumed.train()
    resumed.cleanup()
    return resumed.resumed_from, result


def assert_same_loss_curve(result: RunResult, straight: RunResult) -> None:
    expected = straight.report["curves"]["trainLoss"]
    got = result.report["curves"]["trainLoss"]
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-4)


def test_resume_continues_the_same_loss_curve(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        output={"checkpointEverySteps": 7},
        regularization={"dropout": 0.2},
    )
    straight = train(config, tmp_path / "straight")
    resumed_from, result = crash_then_resume(config, tmp_path / "resumed", "test", 14)
    assert resumed_from == tmp_path / "resumed/checkpoints/step-00000014"
    assert_same_loss_curve(result, straight)
    assert result.metrics["accuracy"] == pytest.approx(straight.metrics["accuracy"])


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        output={"checkpointEverySteps": 2},
        training={"learningRate": 10.0, "optimizer": "sgd", "epochs": 3},
        regularization={"maxGradNorm": None},
    )
    result = train(config, tmp_path)
    assert not result.succeeded
    assert result.diagnosis.verdict == "Diverged"
    assert "diverged at step" in result.message
    assert result.report["steps"] < 60
    assert not (tmp_path / "model").exists()
    assert result.report["artifacts"]["lastCheckpoint"].endswith(
        sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1]
    )


def test_a_divergence_before_any_checkpoint_says_there_is_none(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        training={"learningRate": 10.0, "optimizer": "sgd", "epochs": 1},
        regularization={"maxGradNorm": None},
    )
    result = train(config, tmp_path)
    assert result.diagnosis.verdict == "Diverged"
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert result.message.endswith("; no checkpoint was saved before it")
    assert "None" not in result.message


def test_early_stopping_and_best_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        training={"epochs": 30, "learningRate": 3e-3},
        evaluation={"earlyStopping": {"patience": 2}, "metric": "loss"},
    )
    result = train(config, tmp_path)
    evaluations = result.report["curves"]["evaluations"]
    assert len(evaluations) < 30
    losses = [e["metrics"]["loss"] for e in evaluations]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) - 1 - best == 2  # stopped after two evaluations without improvement
    assert result.report["bestCheckpoint"] == f"step-{evaluations[best]['step']:08d}"
    assert (tmp_path / "checkpoints" / result.report["bestCheckpoint"]).exists()
    assert result.metrics["loss"] == pytest.approx(losses[best])
    assert result.message == (
        f"best loss={losses[best]:.4f}; stopped early at step {evaluations[-1]['step']} of 600: "
        "loss did not improve by more than 0 in 2 evaluations (evaluation.earlyStopping)"
    )


def test_learning_rate_range_test_is_recorded_and_leaves_the_model_untouched(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        training={"epochs": 1, "findLearningRate": {"steps": 30, "startLr": 1e-6, "endLr": 1.0}},
    )
    recipe = Recipe(config, tmp_path, job_name="test", env={})
    reference = Recipe(
        copy.deepcopy(config).model_copy(
            update={"training": config.training.model_copy(update={"find_learning_rate": None})}
        ),
        tmp_path / "reference",
        job_name="test",
        env={},
    )
    recipe.setup()
    reference.setup()
    tested = recipe.accelerator.unwrap_model(recipe.model).state_dict()
    untouched = reference.accelerator.unwrap_model(reference.model).state_dict()
    assert all(torch.equal(tested[k], untouched[k]) for k in untouched)
    found = recipe.state.range_test
    assert found is not None
    assert 1e-6 <= found["suggestion"] <= 1.0
    head = next(g for g in recipe.optimizer.param_groups if "head" in g["layers"])
    assert head["initial_lr"] == pytest.approx(found["suggestion"])
    recipe.cleanup()
    reference.cleanup()


def test_cross_validation_trains_one_model_per_fold_and_reports_the_spread(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    config = make_config(
        tiny_model_dir,
        small_data,
        training={"epochs": 2},
        evaluation={"crossValidation": {"folds": 3}},
    )
    result = train(config, tmp_path)
    summary = result.report["crossValidation"]
    assert summary["folds"] == 3
    folds = [json.loads((tmp_path / f"fold-{k}/report.json").read_text()) for k in range(3)]
    assert sum(f["data"]["rows"]["validation_out"] for f in folds) == 320
    accuracies = [f["bestMetrics"]["accuracy"] for f in folds]
    assert summary["metrics"]["accuracy"]["folds"] == accuracies
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 3)
    assert summary["metrics"]["accuracy"]["std"] == pytest.approx(
        float(torch.tensor(accuracies, dtype=torch.float64).std()), rel=1e-9
    )
    best = summary["bestFold"]
    assert accuracies[best] == max(accuracies)
    assert weights(tmp_path).keys() == weights(tmp_path / f"fold-{best}").keys()
    assert json.loads((tmp_path / "report.json").read_text())["crossValidation"] == summary
    assert result.report["cost"] == folds[-1]["cost"]  # each fold counts the folds before it


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_lora_trains_adapters_only_and_saves_the_adapter_and_a_merged_model(
    tmp_path: Path, tiny_model_dir: Path, small_data: tuple[Path, Path], quantization: str
) -> None:
    import csv

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tests.tiny import make_tiny_model

    model_dir = tiny_model_dir
    if quantization != "none":  # bitsandbytes' CPU kernels need rows of 64 weights at least
        with small_data[0].open() as handle:
            texts = [row["text"] for row in csv.DictReader(handle)]
        model_dir = make_tiny_model(tmp_path / "bert64", texts, hidden=64)
    lora = {"rank": 4, "targetModules": ["query", "value"], "quantization": quantization}
    config = make_config(
        model_dir,
        small_data,
        training={"epochs": 1, "lora": lora},
        output={"mergeAdapter": True},
    )
    out = tmp_path / "out"
    recipe = Recipe(config, out, job_name="test", env={})
    recipe.setup()
    trainable = {
        n
        for n, p in recipe.accelerator.unwrap_model(recipe.model).named_parameters()
        if p.requires_grad
    }
    assert trainable
    assert all("lora_" in n or "classifier" in n for n in trainable)
    result = recipe.train()
    recipe.cleanup()
    assert result.succeeded
    assert result.report["artifacts"]["model"] == str(out / "model")
    assert result.report["artifacts"]["mergedModel"] == str(out / "merged")
    assert (out / "model/adapter_model.safetensors").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    before = load_file(model_dir / "model.safetensors")
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(merged.state_dict()[query], before[query])  # adapters merged in
    key = "bert.encoder.layer.0.attention.self.key.weight"
    assert torch.equal(merged.state_dict()[key], before[key])  # a full-precision base
    base = AutoModelForSequenceClassification.from_pretrained(model_dir)
    adapted = PeftModel.from_pretrained(base, out / "model")
    head = adapted.base_model.model.state_dict()["classifier.modules_to_save.default.weight"]
    assert torch.equal(head, merged.state_dict()["classifier.weight"])  # trained in full


def test_causal_lm_learns_to_answer_and_ignores_the_prompt_in_the_loss(
    tmp_path: Path, small_data: tuple[Path, Path]
) -> None:
    import csv

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.data import IGNORED_LABEL, prepare_data
    from tests.tiny import make_tiny_causal_lm

    with small_data[0].open() as handle:
        texts = [row["text"] + " " + row["label"] for row in csv.DictReader(handle)]
    model = make_tiny_causal_lm(tmp_path / "gpt", texts)
    pairs = stereotype_pairs(small_data[1], tmp_path / "pairs.csv")
    config = TrainingConfig.model_validate(
        {
            "model": {"source": str(model), "task": "causal-lm"},
            "data": {
                "train": {"source": str(small_data[0])},
                "validation": {"source": str(small_data[1])},
                "textColumn": "text",
                "textPairColumn": "label",
                "maxLength": 48,
                "sensitiveColumns": ["dialect"],
            },
            "training": {"epochs": 4, "batchSize": 16, "learningRate": 3e-3, "seed": 3},
            "evaluation": {
                "metric": "exactMatch",
                "generation": {"samples": 20, "maxNewTokens": 3},
                "attributions": {"sampleSize": 2, "responseTokens": 2},
            },
            "bias": {"minGroupSize": 5, "stereotypePairs": {"pairs": {"source": str(pairs)}}},
        },
        by_name=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(model)
    prepared = prepare_data(config, tokenizer)
    first = prepared.train[0]
    prompt = tokenizer(prepared.train_texts[0], add_special_tokens=False)["input_ids"]
    assert first["labels"][: len(prompt)] == [IGNORED_LABEL] * len(prompt)
    assert first["labels"][len(prompt) :] == first["input_ids"][len(prompt) :]
    assert first["input_ids"][-1] == tokenizer.eos_token_id

    result = train(config, tmp_path / "run")
    assert result.succeeded
    evaluations = result.report["curves"]["evaluations"]
    losses = [e["metrics"]["loss"] for e in evaluations]
    assert losses[-1] < 0.5 * losses[0]  # two answer tokens out of ~110 words: learnable
    assert result.metrics["perplexity"] == pytest.approx(math.exp(result.metrics["loss"]))
    assert result.report["primaryMetric"] == "exactMatch"
    # Generated, the answer is the label: the trained model names more of them than the
    # random one it started from, and the table's completions give the metric.
    generation = result.report["generation"]
    labels = {row["label"] for row in csv.DictReader(small_data[1].open())}
    assert {row["reference"] for row in generation["rows"]} <= labels
    before, after = (generation[when]["metrics"]["exactMatch"] for when in ("before", "after"))
    assert after > before
    hits = [row["after"] == row["reference"] for row in generation["rows"]]
    assert after == sum(hits) / 20 == result.metrics["exactMatch"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run/model")
    assert reloaded.config.model_type == "gpt2"
    check_language_model_audit(tmp_path / "run", result.report, reloaded, tokenizer, pairs)
    check_generation_per_group(result.report, prepared.validation_groups["dialect"])


def stereotype_pairs(validation: Path, path: Path) -> Path:
    """Six pairs of validation sentences with 'proper' (the regional dialect) and 'really'."""
    import csv

    with validation.open() as handle:
        texts = [row["text"] for row in csv.DictReader(handle) if " proper " in row["text"]]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["sent_more", "sent_less", "bias_type"])
        writer.writerows(
            [text, text.replace(" proper ", " really "), "dialect"] for text in texts[:6]
        )
    return path


def check_language_model_audit(
    run: Path, report: dict[str, Any], model: Any, tokenizer: Any, pairs: Path
) -> None:
    """status.biasAudit and report.json carry the causal LM's audit; the pair gaps are those
    of the saved model; the attributions explain two prompts; report.html shows them."""
    import csv

    from kubetune_operator.api.v1alpha1 import BiasAuditStatus
    from tests.integration.test_data_in_training import sections

    (status,) = sections(run, "biasAudit")
    parsed = BiasAuditStatus.model_validate(status)
    scores, gaps = ("exactMatch", "tokenF1", "rougeL"), ("Difference", "Ratio")
    generation_gaps = {f"{score}{gap}" for score in scores for gap in gaps}
    assert {m.name for m in parsed.metrics} == {
        "stereotypeShareDeviation",
        "lossDifference",
        "perplexityRatio",
        *generation_gaps,
    }
    groups = {(g.attribute, g.group): g.count for g in parsed.groups}
    assert groups[("stereotypePairs", "dialect")] == 6
    assert groups[("dialect", "regional")] + groups[("dialect", "standard")] == 80
    audit = report["biasAudit"]
    assert audit["kind"] == "causal-lm"
    assert audit["verdict"] == parsed.verdict
    [category] = audit["stereotypePairs"]["categories"]
    assert category["baseStereotypeShare"] is not None
    with pairs.open() as handle:
        rows = list(csv.DictReader(handle))
    gaps = [
        log_likelihood(model, tokenizer, row["sent_more"])
        - log_likelihood(model, tokenizer, row["sent_less"])
        for row in rows
    ]
    assert category["meanGap"] == pytest.approx(sum(gaps) / len(gaps), abs=1e-4)
    assert len(audit["stereotypePairs"]["moved"]) == 6
    examples = report["attributions"]["examples"]
    assert len(examples) == 2
    assert all(example["tokens"] and example["response"] for example in examples)
    page = (run / "report.html").read_text()
    assert "Stereotype pairs" in page
    assert "Prompts and their responses" in page


def check_generation_per_group(report: dict[str, Any], dialects: list[str]) -> None:
    """Each dialect's exactMatch over the generation sample is the share of its sampled rows
    that the kept completions (the best checkpoint's) answer exactly; reported, not gated."""
    hits: dict[str, list[bool]] = {}
    for row in report["generation"]["rows"]:
        hits.setdefault(dialects[row["row"]], []).append(row["after"] == row["reference"])
    (table,) = [t for t in report["biasAudit"]["groupQuality"] if t["metric"] == "exactMatch"]
    assert table["rows"] == "generation sample"
    assert {g["group"]: (g["count"], g["value"]) for g in table["groups"]} == {
        group: (len(found), sum(found) / len(found)) for group, found in hits.items()
    }
    gaps = {m["name"]: m for m in report["biasAudit"]["metrics"] if m["attribute"] == "dialect"}
    assert gaps["exactMatchRatio"]["passed"] is None  # bias.thresholds.generationRatio left out


def log_likelihood(model: Any, tokenizer: Any, text: str) -> float:
    ids = torch.tensor(
        [[tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]]
    )
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return float(sum(log_probs[t - 1, ids[0, t]] for t in range(1, ids.shape[1])))


def test_dropout_overrides_reach_the_model_config(
    tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    from kubetune_trainer.modeling import load_model

    config = make_config(
        tiny_model_dir, small_data, regularization={"dropout": 0.3, "attentionDropout": 0.05}
    )
    model = load_model(config, ["negative", "positive"])
    assert model.config.hidden_dropout_prob == 0.3
    assert model.config.attention_probs_dropout_prob == 0.05
    assert model.bert.encoder.layer[0].output.dropout.p == 0.3


def test_a_classifier_is_fine_tuned_to_a_different_number_of_classes(
    tiny_model_dir: Path, small_data: tuple[Path, Path]
) -> None:
    from kubetune_trainer.modeling import load_model

    labels = ["negative", "positive", "neutral"]
    model = load_model(make_config(tiny_model_dir, small_data), labels)  # saved with 2 classes
    assert model.classifier.out_features == 3
    assert model.config.id2label == dict(enumerate(labels))
    before = load_file(tiny_model_dir / "model.safetensors")
    kept = model.bert.encoder.layer[0].output.dense.weight
    assert torch.equal(kept, before["bert.encoder.layer.0.output.dense.weight"])


def test_label_smoothing_is_the_smoothed_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.5], [0.1, 0.3]])
    labels = torch.tensor([0, 1])
    smoothed = classification_loss(logits, labels, label_smoothing=0.1)
    by_hand = (
        sum(
            -(
                0.95 * torch.log_softmax(logits[i], 0)[labels[i]]
                + 0.05 * torch.log_softmax(logits[i], 0)[1 - labels[i]]
            ).item()
            for i in range(2)
        )
        / 2
    )
    assert smoothed.item() == pytest.approx(by_hand, rel=1e-6)
