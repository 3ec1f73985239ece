"""A trial's values and objective read the same wherever a search shows them: the lines
`kubetune run` prints as trials start and end, its summary, `kubetune status`, the
parent's status messages and Events, and search.html, all through formatting.value_text."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from kubetune_operator.api.v1alpha1 import FineTuneJobSpec, TrialStatus
from kubetune_operator.cli.local.searches import TrialResult, ended_line, started_line
from kubetune_operator.cli.views import job_status, run_summary, search_page
from kubetune_operator.controller import trials
from kubetune_operator.search import TrialPlan, search_outcome, search_status
from kubetune_trainer.formatting import params_text, value_text

LEARNING_RATE = {"path": "training.learningRate", "type": "float", "min": 1e-6, "max": 1e-2}
BATCH_SIZE = {"path": "training.batchSize", "type": "int", "min": 8, "max": 64}
SCHEDULER = {"path": "training.scheduler", "type": "categorical", "choices": ["linear", "cosine"]}
PARAMS: dict[str, Any] = {
    "training.learningRate": 0.00014059283,
    "training.batchSize": 32,
    "training.scheduler": "cosine",
}
SMALL_RATE: dict[str, Any] = {
    "training.learningRate": 1.4059283e-5,
    "training.batchSize": 16,
    "training.scheduler": "linear",
}
SHOWN = "training.learningRate=0.0001406, training.batchSize=32, training.scheduler=cosine"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.00014059283, "0.0001406"),
        (1.4059283e-5, "1.406e-5"),
        (0.87654321, "0.8765"),
        (0.5, "0.5"),
        (3.0, "3"),
        (123456.7, "1.235e5"),
        (32, "32"),
        (1024, "1024"),
        ("cosine", "cosine"),
        (True, "true"),
        (None, "\u2013"),
        (math.nan, "\u2013"),
    ],
)
def test_a_value_shows_4_significant_digits_ints_as_ints_and_text_as_it_is(
    value: object, shown: str
) -> None:
    assert value_text(value) == shown


def test_params_read_as_path_equals_value() -> None:
    assert params_text(PARAMS) == SHOWN
    assert params_text(SMALL_RATE) == (
        "training.learningRate=1.406e-5, training.batchSize=16, training.scheduler=linear"
    )


def trial(number: int, params: dict[str, Any], objective: float | None) -> TrialStatus:
    state = "Running" if objective is None else "Complete"
    return TrialStatus(
        number=number, name=f"lr-trial-{number}", state=state, params=params, objective=objective
    )


def test_the_lines_kubetune_run_prints_as_trials_start_and_end() -> None:
    assert started_line(trial(0, PARAMS, None)) == f"trial 0 started: {SHOWN}"
    assert ended_line(0, "loss", TrialResult("Complete", 0.87654321)) == (
        "trial 0 complete: loss=0.8765"
    )
    assert ended_line(1, "loss", TrialResult("Complete", 1.4059283e-5)) == (
        "trial 1 complete: loss=1.406e-5"
    )


def test_the_event_of_a_created_trial_names_its_rounded_values() -> None:
    plan = TrialPlan(number=0, name="lr-trial-0", params=PARAMS)
    assert trials.created_message(plan) == f"trial 0: created lr-trial-0 with {SHOWN}"


def search_spec(sentiment: dict[str, Any]) -> FineTuneJobSpec:
    search = {
        "parameters": [LEARNING_RATE, BATCH_SIZE, SCHEDULER],
        "objective": {"metric": "loss"},
        "maxTrials": 2,
    }
    return FineTuneJobSpec.model_validate({**sentiment["spec"], "search": search})


TRIALS = [trial(0, PARAMS, 0.87654321), trial(1, SMALL_RATE, 0.91234567)]


def test_the_parents_status_and_outcome_round_the_best_objective(
    sentiment: dict[str, Any],
) -> None:
    spec = search_spec(sentiment)
    assert search_status(spec, TRIALS)["metricSummary"] == "loss=0.8765"
    assert search_outcome(spec, TRIALS).message == ("best of 2 trials: lr-trial-0 with loss=0.8765")


def printed(parts: list[Any]) -> list[str]:
    console = Console(width=200, record=True, file=io.StringIO())
    for part in parts:
        console.print(part)
    return [line.rstrip() for line in console.export_text().splitlines()]


def search_report_json(spec: FineTuneJobSpec) -> dict[str, Any]:
    """report.json of a finished local search, as cli/local/searches.py writes it."""
    return {
        "job": "lr",
        "kind": "search",
        "succeeded": True,
        "search": {"algorithm": "tpe", "objective": {"metric": "loss", "direction": "minimize"}},
        **search_status(spec, TRIALS),
    }


def test_kubetune_runs_summary_shows_the_rounded_values(
    sentiment: dict[str, Any], tmp_path: Path
) -> None:
    report = search_report_json(search_spec(sentiment))
    lines = printed(run_summary.renderables(report, tmp_path))
    table = lines.index(next(line for line in lines if line.startswith(" trial ")))
    assert lines[table + 1].split() == ["0", "★", "Complete", "0.0001406", "32", "cosine", "0.8765"]
    assert lines[table + 2].split() == ["1", "Complete", "1.406e-5", "16", "linear", "0.9123"]
    assert "best trial     lr-trial-0 (loss 0.8765)" in lines
    assert f"  params:  {SHOWN}" in lines


def test_kubetune_status_shows_the_rounded_best_objective(sentiment: dict[str, Any]) -> None:
    status = search_status(search_spec(sentiment), TRIALS)
    job = {"metadata": {"namespace": "team-a", "name": "lr"}, "status": status}
    lines = printed(job_status.renderables(job, [], now=datetime(2030, 1, 1, tzinfo=UTC)))
    assert "trials  2: 2 complete; best lr-trial-0 (0.8765)" in lines


def main_tree(page: str) -> ET.Element:
    main = page[page.index("<main>") : page.index("</main>") + len("</main>")]
    return ET.fromstring(main.replace(' xmlns="http://www.w3.org/2000/svg"', ""))


def cells(row: ET.Element) -> list[str]:
    return ["".join(cell.itertext()) for cell in row]


def header_facts(tree: ET.Element) -> dict[str, str]:
    """The header's cards: label -> value."""
    return dict(tuple(cells(card)) for card in tree.findall("./header/dl/div"))  # type: ignore[misc]


def test_search_html_shows_the_same_rounded_values(sentiment: dict[str, Any]) -> None:
    tree = main_tree(search_page.render_search_html("lr", search_spec(sentiment), TRIALS))
    body = tree.findall(".//table[@class='trials']/tbody/tr")
    assert [cells(row) for row in body] == [
        ["0 \u2605", "lr-trial-0", "Complete", "0.0001406", "32", "cosine", "0.8765", ""],
        ["1", "lr-trial-1", "Complete", "1.406e-5", "16", "linear", "0.9123", ""],
    ]
    best = tree.findall("./header/table/tbody/tr")
    assert [cells(row) for row in best] == [
        ["training.learningRate", "0.0001406"],
        ["training.batchSize", "32"],
        ["training.scheduler", "cosine"],
    ]
    assert header_facts(tree)["best loss"] == "0.8765"
    tooltips = {"".join(title.itertext()) for title in tree.iter("title")}
    assert "trial 0: loss 0.8765" in tooltips
    assert "trial 1 (training.learningRate=1.406e-5): loss 0.9123" in tooltips
    assert "trial 0 (training.scheduler=cosine): loss 0.8765" in tooltips
