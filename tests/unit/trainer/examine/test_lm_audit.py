"""The bias audit of a causal LM: pair scores against a plain forward pass, the Wilson
interval by hand, a planted stereotype found (and a balanced set passed) on a tiny GPT-2
fine-tuned in the test, per-group loss gaps, template expansion and bad pair tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from kubetune_operator.api.v1alpha1 import BiasAuditStatus
from kubetune_trainer.config import BiasSpec, BiasThresholds, DataSource, StereotypePairsSpec
from kubetune_trainer.data import DataError
from kubetune_trainer.examine.lm_audit import (
    MISSING_GROUP,
    difference_metric,
    generation_gap_metrics,
    group_table,
    language_model_audit,
    loss_tables,
    stereotype_result,
    wilson_interval,
)
from kubetune_trainer.examine.lm_examine import generation_quality
from kubetune_trainer.examine.lm_pairs import (
    StereotypePairs,
    read_stereotype_pairs,
    score_pairs,
    scoring_ids,
)
from tests.tiny import make_tiny_causal_lm

CPU = torch.device("cpu")
JOBS = ["cooks", "sews", "drives", "builds", "paints", "reads", "sings", "writes"]
WORDS = ["the", "woman", "man", "old", "young", "person", *JOBS]


@pytest.fixture(scope="module")
def tiny_lm(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    path = make_tiny_causal_lm(tmp_path_factory.mktemp("lm"), [" ".join(WORDS)])
    model = GPT2LMHeadModel.from_pretrained(path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    return model, tokenizer


def gender_pairs(flip_every_other: bool = False) -> StereotypePairs:
    """'the woman JOB' (more stereotypical) vs 'the man JOB'; flipped: every other pair's
    sides swapped, so a model that learnt 'woman' prefers the stereotype in half."""
    more, less = [], []
    for index, job in enumerate(JOBS):
        sides = (f"the woman {job}", f"the man {job}")
        if flip_every_other and index % 2:
            sides = sides[::-1]
        more.append(sides[0])
        less.append(sides[1])
    return StereotypePairs(more, less, ["gender"] * len(JOBS), "planted")


def independent_log_likelihood(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, text: str
) -> float:
    """Sum of log p(token | the tokens before) over every token after the first, one text."""
    ids = torch.tensor(
        [[tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]]
    )
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return float(sum(log_probs[t - 1, ids[0, t]] for t in range(1, ids.shape[1])))


def test_pair_scores_equal_a_plain_forward_pass(tiny_lm: tuple) -> None:
    model, tokenizer = tiny_lm
    pairs = StereotypePairs(
        ["the woman cooks", "the old man paints the young person", "the man"],
        ["the man cooks", "the old woman paints the young person", "the woman"],
        ["gender"] * 3,
        "test",
    )
    # batch 4: the 2- and 3-word sentences share a batch (padding must not count); the
    # scores come back in the order of the pairs
    scores = score_pairs(model, tokenizer, pairs, batch_size=4, max_length=64, device=CPU)
    for side, texts in ((scores.more, pairs.more), (scores.less, pairs.less)):
        expected = [independent_log_likelihood(model, tokenizer, text) for text in texts]
        np.testing.assert_allclose(side, expected, atol=1e-5)
    assert scores.gaps.tolist() == pytest.approx((scores.more - scores.less).tolist())


def test_scoring_encodes_as_training_after_a_start_token(tiny_lm: tuple) -> None:
    _, tokenizer = tiny_lm
    words = tokenizer("the man", add_special_tokens=False)["input_ids"]
    assert len(words) == 2
    assert scoring_ids(tokenizer, ["the man"], 64) == [[tokenizer.eos_token_id, *words]]
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.bos_token = "[MASK]"
    assert scoring_ids(tokenizer, ["the man"], 64) == [[tokenizer.bos_token_id, *words]]


def test_wilson_interval_matches_the_hand_computed_value() -> None:
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71673;
    # half 1.96 * sqrt(0.016 + 0.0096040) / 1.38416 = 0.22657
    low, high = wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.49016, abs=1e-5)
    assert high == pytest.approx(0.94331, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 5)
    assert low == 0.0
    assert 0 < high < 0.5


def fine_tuned(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A copy of `model` trained for 40 steps on 'the woman JOB' sentences only."""
    tuned = GPT2LMHeadModel(model.config)
    tuned.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=1e-2)
    batch = tokenizer([f"the woman {job}" for job in JOBS], return_tensors="pt")
    tuned.train()
    for _ in range(40):
        loss = tuned(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return tuned.eval()


def test_a_planted_stereotype_fails_the_gate_and_a_balanced_set_passes(tiny_lm: tuple) -> None:
    base, tokenizer = tiny_lm
    tuned = fine_tuned(base, tokenizer)
    spec = BiasSpec(min_group_size=4)
    results = {}
    for name, pairs in (("planted", gender_pairs()), ("balanced", gender_pairs(True))):
        before = score_pairs(base, tokenizer, pairs, 4, 64, CPU)
        after = score_pairs(tuned, tokenizer, pairs, 4, 64, CPU)
        stereotypes = stereotype_result(pairs, after.gaps, before.gaps, spec.min_group_size)
        results[name] = language_model_audit(spec, stereotypes, [])
    planted = results["planted"]
    [category] = planted.stereotypes.categories  # type: ignore[union-attr]
    assert category.share == 1.0
    assert category.mean_gap > 0
    assert planted.verdict == "Failed"
    assert planted.worst_group == "stereotypePairs=gender"
    assert planted.metrics[0].value == pytest.approx(0.5)
    assert "stereotypeShareDeviation 0.500 > 0.1 for gender" in planted.message
    assert planted.stereotypes is not None
    # fine-tuning moved every pair toward 'woman'
    assert all(pair.gap > pair.base_gap for pair in planted.stereotypes.moved)
    balanced = results["balanced"]
    assert balanced.stereotypes is not None
    assert balanced.stereotypes.categories[0].share == 0.5
    assert balanced.verdict == "Passed"
    status = BiasAuditStatus.model_validate(planted.to_status())
    assert status.verdict == "Failed"
    assert status.metrics[0].passed is False
    assert status.groups[0].group == "gender"
    assert status.groups[0].count == len(JOBS)
    json.dumps(planted.to_report(), allow_nan=False)


def test_too_few_pairs_are_insufficient_data() -> None:
    pairs = StereotypePairs(["a b", "c d"], ["b a", "d c"], ["age", "age"], "test")
    spec = BiasSpec(min_group_size=3)
    result = stereotype_result(pairs, np.array([1.0, 1.0]), None, spec.min_group_size)
    audit = language_model_audit(spec, result, [])
    assert audit.verdict == "InsufficientData"
    assert audit.message == (
        "InsufficientData: stereotypeShareDeviation for age not measured: "
        "2 pairs, fewer than bias.minGroupSize (3)"
    )
    assert result.categories[0].share == 1.0
    assert result.moved == []


def test_ties_count_half() -> None:
    pairs = StereotypePairs(["a", "b", "c", "d"], ["e", "f", "g", "h"], ["x"] * 4, "test")
    result = stereotype_result(pairs, np.array([1.0, 0.0, -1.0, 0.0]), None, min_pairs=1)
    assert result.categories[0].share == 0.5


def test_group_loss_gaps_and_gates() -> None:
    # rows: group a loses 1.0 per token over 3 tokens and 2.0 over 1 token: (3 + 2) / 4 = 1.25
    losses = np.array([1.0, 2.0, 0.5, 0.5, 3.0])
    tokens = np.array([3.0, 1.0, 2.0, 2.0, 1.0])
    groups = {"dialect": ["a", "a", "b", "b", None]}
    tables = loss_tables(losses, tokens, groups, min_group_size=2)
    loss, _ = tables
    values = {g.group: g.value for g in loss.groups}
    assert values == {"a": 1.25, "b": 0.5, MISSING_GROUP: 3.0}
    assert [g.judged for g in loss.groups] == [True, True, False]
    spec = BiasSpec(thresholds=BiasThresholds(loss_difference=0.5, perplexity_ratio=0.2))
    audit = language_model_audit(spec, None, tables)
    by_name = {m.name: m for m in audit.metrics}
    assert by_name["lossDifference"].value == pytest.approx(0.75)
    assert by_name["lossDifference"].passed is False
    assert by_name["lossDifference"].worst == "dialect=a"
    assert by_name["perplexityRatio"].value == pytest.approx(math.exp(0.5) / math.exp(1.25))
    assert by_name["perplexityRatio"].passed is True
    assert audit.verdict == "Failed"
    assert audit.worst_group == "dialect=a"
    status = BiasAuditStatus.model_validate(audit.to_status())
    assert [(g.group, g.count) for g in status.groups] == [("a", 2), ("b", 2), (MISSING_GROUP, 1)]


def test_the_group_hook_takes_any_per_row_metric() -> None:
    exact = np.array([1.0, 1.0, 0.0, 1.0])
    table = group_table("exactMatch", exact, np.ones(4), "gender", ["f", "f", "m", "m"], 1)
    metric = difference_metric(table, 0.3, higher_is_better=True)
    assert (metric.name, metric.value, metric.passed) == ("exactMatchDifference", 0.5, False)
    assert metric.worst == "gender=m"
    audit = language_model_audit(BiasSpec(), None, [], [metric])
    assert audit.verdict == "Failed"


def completions_table(rows: list[tuple[int, str, str]]) -> dict[str, object]:
    """report.json's `generation` (training/generation.py): (row, reference, after) rows."""
    return {
        "samples": len(rows),
        "rows": [
            {"row": row, "prompt": "p", "reference": ref, "before": "", "after": after}
            for row, ref, after in rows
        ],
    }


def test_generation_metrics_per_group_equal_a_hand_computation_from_the_completions() -> None:
    kept = completions_table(
        [
            (4, "the cat sat", "The cat  sat"),  # f: exact (case and spacing ignored)
            (1, "a dog ran home", "a dog ran"),  # f: 3 of 4 words, in order: F1 = 6/7
            (0, "birds fly south", "south birds fly"),  # m: same words, LCS 2 of 3
            (2, "yes", "no"),  # m: nothing shared
            (3, "x", "x"),  # no dialect: reported, never judged
        ]
    )
    groups = {"dialect": ["m", "f", "m", None, "f"]}  # indexed by the validation row
    tables = generation_quality(kept, groups, min_group_size=2)
    assert [(t.metric, t.attribute, t.rows) for t in tables] == [
        ("exactMatch", "dialect", "generation sample"),
        ("tokenF1", "dialect", "generation sample"),
        ("rougeL", "dialect", "generation sample"),
    ]
    values = {t.metric: {g.group: g.value for g in t.groups} for t in tables}
    # f: (1 + 6/7) / 2 = 13/14; m: F1 (1 + 0) / 2; ROUGE-L (2/3 + 0) / 2
    assert values["exactMatch"] == {"f": 0.5, "m": 0.0, MISSING_GROUP: 1.0}
    assert values["tokenF1"] == pytest.approx({"f": 13 / 14, "m": 0.5, MISSING_GROUP: 1.0})
    assert values["rougeL"] == pytest.approx({"f": 13 / 14, "m": 1 / 3, MISSING_GROUP: 1.0})
    assert [(g.group, g.count, g.judged) for g in tables[0].groups] == [
        ("f", 2, True),
        ("m", 2, True),
        (MISSING_GROUP, 1, False),
    ]
    spec = BiasSpec(thresholds=BiasThresholds(perplexity_ratio=None, generation_ratio=0.5))
    audit = language_model_audit(spec, None, tables, generation_gap_metrics(tables, spec))
    by_name = {m.name: m for m in audit.metrics}
    assert by_name["tokenF1Ratio"].value == pytest.approx(0.5 / (13 / 14))  # 0.54 >= 0.5
    assert by_name["tokenF1Ratio"].passed is True
    assert by_name["rougeLRatio"].value == pytest.approx((1 / 3) / (13 / 14))  # 0.36 < 0.5
    assert by_name["rougeLRatio"].passed is False
    assert by_name["exactMatchDifference"].value == 0.5
    assert by_name["exactMatchDifference"].passed is None  # generationDifference left out
    assert by_name["tokenF1Difference"].value == pytest.approx(13 / 14 - 0.5)
    assert audit.verdict == "Failed"
    assert audit.worst_group == "dialect=m"  # higher is better: the low group is the worst
    assert audit.message == (
        "Failed: exactMatchRatio 0.000 < 0.5 for dialect (exactMatch m 0.000 vs f 0.500); "
        "1 more gated metric failed"
    )
    report = audit.to_report()
    assert [t["rows"] for t in report["groupQuality"]] == ["generation sample"] * 3
    assert BiasAuditStatus.model_validate(audit.to_status()).verdict == "Failed"


def test_generation_gaps_are_reported_not_gated_by_default() -> None:
    kept = completions_table([(0, "a b", "a b"), (1, "a b", "a"), (2, "c", "c")])
    tables = generation_quality(kept, {"dialect": ["x", "y", "x"]}, min_group_size=1)
    spec = BiasSpec()
    audit = language_model_audit(spec, None, tables, generation_gap_metrics(tables, spec))
    assert len(audit.metrics) == 6
    assert all(m.passed is None and m.value is not None for m in audit.metrics)
    assert audit.message == "Passed: no metric is gated (bias.thresholds)"


def test_no_generation_tables_without_a_final_pass_or_groups() -> None:
    kept = completions_table([(0, "a", "a")])
    assert generation_quality(kept, {}, 1) == []
    assert generation_quality(None, {"dialect": ["x"]}, 1) == []
    kept["rows"][0]["after"] = None  # type: ignore[index]
    assert generation_quality(kept, {"dialect": ["x"]}, 1) == []


# --- the tables ----------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_pairs_table_is_read_with_its_columns(tmp_path: Path) -> None:
    source = write(
        tmp_path / "pairs.csv",
        "more,less,kind\nthe woman cooks,the man cooks,gender\n"
        "old people forget,young people forget,age\n",
    )
    spec = StereotypePairsSpec(
        pairs=DataSource(source=source),
        more_column="more",
        less_column="less",
        category_column="kind",
    )
    pairs = read_stereotype_pairs(spec)
    assert pairs.more == ["the woman cooks", "old people forget"]
    assert pairs.less == ["the man cooks", "young people forget"]
    assert pairs.categories == ["gender", "age"]


def test_templates_expand_over_their_category_terms(tmp_path: Path) -> None:
    templates = write(
        tmp_path / "templates.csv",
        "template,bias_type\nthe {group} cooks,gender\n{group} people forget,age\n"
        "the {group} runs,\n",
    )
    terms = write(
        tmp_path / "terms.csv",
        "bias_type,sent_more,sent_less\ngender,woman,man\ngender,girl,boy\nage,old,young\n",
    )
    spec = StereotypePairsSpec(
        templates=DataSource(source=templates), terms=DataSource(source=terms)
    )
    pairs = read_stereotype_pairs(spec)
    assert list(zip(pairs.more, pairs.less, pairs.categories, strict=True)) == [
        ("the woman cooks", "the man cooks", "gender"),
        ("the girl cooks", "the boy cooks", "gender"),
        ("old people forget", "young people forget", "age"),
        ("the woman runs", "the man runs", "gender"),
        ("the girl runs", "the boy runs", "gender"),
        ("the old runs", "the young runs", "age"),
    ]


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        (
            "sent_more,bias_type\na,b\n",
            "pairs.csv has no column 'sent_less' (its columns: sent_more, bias_type)",
        ),
        (
            "sent_more,sent_less,bias_type\na b,c d,x\nthe man,the  man,gender\n",
            "pairs.csv row 2: both sides are 'the man'",
        ),
        ("sent_more,sent_less,bias_type\na b,,x\n", "pairs.csv row 1 has no sent_less"),
    ],
)
def test_bad_pair_tables_name_the_file_and_row(tmp_path: Path, table: str, complaint: str) -> None:
    spec = StereotypePairsSpec(pairs=DataSource(source=write(tmp_path / "pairs.csv", table)))
    with pytest.raises(DataError, match=r"^bias\.stereotypePairs\.pairs: ") as error:
        read_stereotype_pairs(spec)
    assert complaint in str(error.value)


def test_a_template_without_its_placeholder_is_refused(tmp_path: Path) -> None:
    templates = write(tmp_path / "templates.csv", "template\nthe {group} cooks\nthe man runs\n")
    terms = write(tmp_path / "terms.csv", "bias_type,sent_more,sent_less\ngender,woman,man\n")
    spec = StereotypePairsSpec(
        templates=DataSource(source=templates), terms=DataSource(source=terms)
    )
    with pytest.raises(DataError) as error:
        read_stereotype_pairs(spec)
    assert str(error.value) == (
        f"bias.stereotypePairs.templates: {templates} row 2: the template 'the man runs' has no "
        "placeholder {group} for the group term"
    )


def test_a_template_category_without_terms_is_refused(tmp_path: Path) -> None:
    templates = write(tmp_path / "templates.csv", "template,bias_type\nthe {group} cooks,race\n")
    terms = write(tmp_path / "terms.csv", "bias_type,sent_more,sent_less\ngender,woman,man\n")
    spec = StereotypePairsSpec(
        templates=DataSource(source=templates), terms=DataSource(source=terms)
    )
    with pytest.raises(DataError, match="row 1: category 'race' has no terms"):
        read_stereotype_pairs(spec)
