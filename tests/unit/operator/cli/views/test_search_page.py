"""search.html from hand-made trials: the table, the charts' marks, the importance, escaping."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import create_trial
from rich.console import Console
from typer.testing import CliRunner

from kubetune_operator.api.v1alpha1 import FineTuneJobSpec
from kubetune_operator.cli import app as cli
from kubetune_operator.cli.views import job_status, run_summary, search_page
from kubetune_operator.search import SearchError
from kubetune_trainer.formatting import MISSING
from tests.html_elements import Elements

LEARNING_RATE = {
    "path": "training.learningRate",
    "type": "float",
    "min": 1e-5,
    "max": 1e-2,
    "log": True,
}
EPOCHS = {"path": "training.epochs", "type": "int", "min": 1, "max": 5}
DROPOUT = {"path": "regularization.dropout", "type": "float", "min": 0.0, "max": 0.3}
SCHEDULER = {
    "path": "training.scheduler",
    "type": "categorical",
    "choices": ["linear", "cosine", "constant"],
}
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
SVG_ONLOAD = "<svg onload=alert(3)>"


def spec_of(manifest: dict[str, Any], **search: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**manifest["spec"], "search": search})


def trial(number: int, state: str, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A status.trials entry as the API server returns it."""
    entry = {"number": number, "name": f"job-trial-{number}", "state": state, "params": params}
    return entry | fields


MINIMIZE_TRIALS = [
    trial(0, "Complete", {"training.learningRate": 1e-4}, objective=0.5),
    trial(1, "Complete", {"training.learningRate": 1e-3}, objective=0.4),
    trial(2, "Failed", {"training.learningRate": 3e-3}),
    trial(3, "Pruned", {"training.learningRate": 1e-5}, intermediate={"20": 0.8, "10": 0.9}),
    trial(4, "Complete", {"training.learningRate": 1e-2}, objective=0.45),
    trial(5, "Running", {"training.learningRate": 5e-4}),
]


# --- reading the page ---------------------------------------------------------------------


def main_tree(page: str) -> ET.Element:
    """The page's <main> as XML (this module writes it well-formed)."""
    main = page[page.index("<main>") : page.index("</main>") + len("</main>")]
    return ET.fromstring(main.replace(' xmlns="http://www.w3.org/2000/svg"', ""))


def text_of(element: ET.Element) -> str:
    return "".join(element.itertext())


def chart(tree: ET.Element, chart_id: str) -> ET.Element:
    found = tree.find(f".//svg[@id='{chart_id}']")
    assert found is not None, chart_id
    return found


def points(svg: ET.Element, state: str) -> list[ET.Element]:
    """The marks of the trials in a state (each a group titled with its trial)."""
    return [g for g in svg.iter("g") if g.get("class") == f"point {state}"]


def centre(mark: ET.Element) -> tuple[float, float]:
    """Where matplotlib placed a mark's symbol (a <use> of its marker path)."""
    use = mark.find(".//use")
    assert use is not None
    return float(use.get("x", "nan")), float(use.get("y", "nan"))


def plot_bottom(svg: ET.Element) -> float:
    """The bottom edge of the plotting area: its clip rectangle's."""
    rect = svg.find(".//clipPath/rect")
    assert rect is not None
    return float(rect.get("y", "nan")) + float(rect.get("height", "nan"))


def texts(svg: ET.Element, anchor: str) -> list[ET.Element]:
    """The chart's unrotated text of an anchor (middle: titles and x ticks; end: y ticks)."""
    return [
        t
        for t in svg.iter("text")
        if f"text-anchor: {anchor}" in t.get("style", "")
        and t.get("transform", "").startswith("rotate(-0 ")
    ]


def x_ticks(svg: ET.Element) -> list[tuple[str, float]]:
    """The x tick labels and where they are, left to right: the centred texts between the
    title (the highest) and the axis label (the lowest)."""
    centred = sorted(texts(svg, "middle"), key=lambda t: float(t.get("y", 0)))[1:-1]
    return sorted(((t.text or "", float(t.get("x", 0))) for t in centred), key=lambda t: t[1])


def tick_labels(svg: ET.Element) -> list[str]:
    """The x tick labels, left to right (below the plot)."""
    return [label for label, _ in x_ticks(svg)]


def path_points(element: ET.Element) -> list[tuple[float, float]]:
    """The vertices of the first <path> in a group, as (x, y)."""
    path = element.find(".//path")
    assert path is not None
    numbers = [float(n) for n in re.findall(r"-?[\d.]+", path.get("d", ""))]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def rows(tree: ET.Element) -> list[tuple[str, list[str]]]:
    """The trials table: (row class, cell texts) per row."""
    body = tree.find(".//table[@class='trials']/tbody")
    assert body is not None
    return [(tr.get("class", ""), [text_of(td) for td in tr]) for tr in body]


def best_so_far_ys(svg: ET.Element) -> list[float]:
    line = svg.find(".//g[@class='best-so-far']")
    assert line is not None
    return [y for _, y in path_points(line)]


# --- the tests ----------------------------------------------------------------------------


def test_minimize_table_marks_the_best_and_each_state(sentiment: dict[str, Any]) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    page = search_page.render_search_html("job", spec, MINIMIZE_TRIALS, {"2": "batch too big"})
    tree = main_tree(page)
    table = rows(tree)
    assert [cells[0] for _, cells in table] == ["0", "1 ★", "2", "3", "4", "5"]
    assert [css for css, _ in table] == ["", "best", "failed", "quiet", "", ""]
    assert table[1][1] == ["1 ★", "job-trial-1", "Complete", "0.001", "0.4", ""]
    assert table[2][1][-2:] == [MISSING, "batch too big"]
    assert table[3][1][-2:] == ["0.8", "stopped after 2 evaluations (value: the last one)"]
    assert table[5][1][2] == "Running"
    header = text_of(tree.find("header"))  # type: ignore[arg-type]
    assert "minimize loss" in header
    assert "best trialjob-trial-1" in header
    assert "finished5 of 20" in header


def test_minimize_objective_chart_draws_each_finished_trial_and_the_best_so_far(
    sentiment: dict[str, Any],
) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    svg = chart(
        main_tree(search_page.render_search_html("job", spec, MINIMIZE_TRIALS)), "chart-objective"
    )
    complete, pruned, failed = (points(svg, s) for s in ("complete", "pruned", "failed"))
    assert (len(complete), len(pruned), len(failed)) == (3, 1, 1)  # the running trial is not drawn
    xs = {round(centre(p)[0], 1) for p in complete + pruned + failed}
    assert len(xs) == 5
    y = {value: centre(p)[1] for p, value in zip(complete, (0.5, 0.4, 0.45), strict=True)}
    assert y[0.4] > y[0.45] > y[0.5]  # lower loss lower on the chart
    assert centre(pruned[0])[1] < y[0.5]  # drawn at its last value, 0.8
    assert centre(failed[0])[1] == pytest.approx(plot_bottom(svg))
    assert centre(failed[0])[1] > max(centre(p)[1] for p in complete + pruned)
    ring = svg.find(".//g[@class='best-mark']")
    assert ring is not None
    assert centre(ring) == pytest.approx(centre(complete[1]))
    line = best_so_far_ys(svg)
    assert line == sorted(line)  # minimizing: the best so far only goes down the chart
    assert line[0] == pytest.approx(y[0.5])
    assert line[-1] == pytest.approx(y[0.4])


def test_a_stopped_trial_is_listed_with_why_but_not_drawn(sentiment: dict[str, Any]) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    stopped = [*MINIMIZE_TRIALS[:5], trial(5, "Stopped", {"training.learningRate": 5e-4})]
    tree = main_tree(search_page.render_search_html("job", spec, stopped))
    assert rows(tree)[5] == (
        "quiet",
        [
            "5",
            "job-trial-5",
            "Stopped",
            "0.0005",
            MISSING,
            "stopped unfinished: the search failed",
        ],
    )
    svg = chart(tree, "chart-objective")
    drawn = [points(svg, state) for state in ("complete", "pruned", "failed")]
    assert [len(marks) for marks in drawn] == [3, 1, 1]
    assert "finished6 of 20" in text_of(tree.find("header"))  # type: ignore[arg-type]


def test_log_parameter_slice_spaces_decades_evenly(sentiment: dict[str, Any]) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    svg = chart(
        main_tree(search_page.render_search_html("job", spec, MINIMIZE_TRIALS)), "chart-slice-0"
    )
    xs = sorted(centre(p)[0] for p in points(svg, "complete"))  # 1e-4, 1e-3, 1e-2
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1], abs=0.02)
    assert tick_labels(svg) == ["1e-5", "0.0001", "0.001", "0.01"]
    assert (len(points(svg, "pruned")), len(points(svg, "failed"))) == (1, 1)
    assert centre(points(svg, "pruned")[0])[0] < xs[0]  # 1e-5, left of 1e-4
    assert "(log scale)" in text_of(svg)


def test_maximize_with_an_int_and_a_categorical_parameter(sentiment: dict[str, Any]) -> None:
    spec = spec_of(
        sentiment,
        parameters=[EPOCHS, SCHEDULER],
        objective={"metric": "accuracy", "direction": "maximize"},
    )
    trials = [
        trial(0, "Complete", {"training.epochs": 1, "training.scheduler": "linear"}, objective=0.7),
        trial(
            1, "Complete", {"training.epochs": 3, "training.scheduler": "cosine"}, objective=0.85
        ),
        trial(2, "Complete", {"training.epochs": 2, "training.scheduler": "cosine"}, objective=0.8),
        trial(
            3, "Complete", {"training.epochs": 4, "training.scheduler": "constant"}, objective=0.9
        ),
        trial(4, "Complete", {"training.epochs": 5, "training.scheduler": "cosine"}, objective=0.6),
    ]
    tree = main_tree(search_page.render_search_html("job", spec, trials))
    assert [css for css, _ in rows(tree)] == ["", "", "", "best", ""]
    assert "maximize accuracy" in text_of(tree)

    objective = chart(tree, "chart-objective")
    line = best_so_far_ys(objective)
    assert line == sorted(line, reverse=True)  # maximizing: the best so far only climbs

    epochs = chart(tree, "chart-slice-0")
    by_epochs = sorted(centre(p)[0] for p in points(epochs, "complete"))
    gaps = [b - a for a, b in itertools.pairwise(by_epochs)]
    assert gaps == pytest.approx([gaps[0]] * 4, abs=0.02)  # a linear axis
    assert "(log scale)" not in text_of(epochs)

    scheduler = chart(tree, "chart-slice-1")
    assert tick_labels(scheduler) == ["linear", "cosine", "constant"]
    category_xs = [x for _, x in x_ticks(scheduler)]
    columns = [
        min(range(3), key=lambda i: abs(category_xs[i] - centre(p)[0]))
        for p in points(scheduler, "complete")
    ]
    assert columns == [0, 1, 1, 2, 1]
    cosine_xs = [
        centre(p)[0] for p, c in zip(points(scheduler, "complete"), columns, strict=True) if c == 1
    ]
    assert len(set(cosine_xs)) == 3  # side by side, none hidden


def optuna_order(
    distributions: dict[str, BaseDistribution], trials: list[dict[str, Any]]
) -> list[str]:
    """fANOVA's ranking computed by Optuna itself on a study built here, not by kubetune."""
    study = optuna.create_study(direction="maximize")
    for t in trials:
        study.add_trial(
            create_trial(params=t["params"], distributions=distributions, value=t["objective"])
        )
    importance = optuna.importance.get_param_importances(
        study, evaluator=FanovaImportanceEvaluator(seed=42)
    )
    return list(importance)


def test_importance_bars_follow_optunas_fanova_ranking(sentiment: dict[str, Any]) -> None:
    spec = spec_of(
        sentiment,
        parameters=[LEARNING_RATE, DROPOUT, SCHEDULER],
        objective={"metric": "accuracy"},
        seed=42,
    )
    schedulers = ["linear", "cosine", "constant"]
    draw = random.Random(5)
    trials = []
    for n in range(12):
        params: dict[str, Any] = {
            "training.learningRate": 10 ** draw.uniform(-5, -2),
            "regularization.dropout": draw.uniform(0.0, 0.3),
            "training.scheduler": draw.choice(schedulers),
        }
        lr = math.log10(params["training.learningRate"]) + 3.5
        value = 0.9 - 0.1 * lr**2 - 0.05 * params["regularization.dropout"]
        value += 0.02 * (params["training.scheduler"] == "cosine")
        trials.append(trial(n, "Complete", params, objective=value))
    distributions: dict[str, BaseDistribution] = {
        "training.learningRate": FloatDistribution(1e-5, 1e-2, log=True),
        "regularization.dropout": FloatDistribution(0.0, 0.3),
        "training.scheduler": CategoricalDistribution(schedulers),
    }
    expected = optuna_order(distributions, trials)
    assert expected[0] == "training.learningRate"

    svg = chart(main_tree(search_page.render_search_html("job", spec, trials)), "chart-importance")
    labels = [t.text for t in texts(svg, "end")]
    assert labels == expected
    bars = [g for g in svg.iter("g") if g.get("class") == "bar"]
    widths = [max(xs) - min(xs) for xs in ([x for x, _ in path_points(bar)] for bar in bars)]
    assert widths == sorted(widths, reverse=True)
    assert len(widths) == 3
    importance, note = search_page.parameter_importance(spec, trials)
    assert note == "fANOVA"
    assert importance is not None
    assert sum(importance.values()) == pytest.approx(1.0)


def test_zero_complete_trials_leave_notes_instead_of_charts(sentiment: dict[str, Any]) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE, SCHEDULER])
    trials = [
        trial(0, "Failed", {"training.learningRate": 1e-3, "training.scheduler": "linear"}),
        trial(1, "Running", {"training.learningRate": 1e-4, "training.scheduler": "cosine"}),
    ]
    page = search_page.render_search_html("job", spec, trials)
    tree = main_tree(page)
    assert tree.find(".//svg") is None
    notes = [text_of(p) for p in tree.iter("p") if p.get("class") == "callout"]
    assert notes == [
        "No trial has reported an objective yet.",
        "The slice plots appear once a trial reports an objective.",
        "Parameter importance needs 3 completed trials (0 completed).",
    ]
    assert [css for css, _ in rows(tree)] == ["failed", ""]
    badge = tree.find("header/div/span")
    assert badge is not None
    assert (badge.text, badge.get("class")) == ("running", "badge neutral")

    empty = main_tree(search_page.render_search_html("job", spec, []))
    assert "No trial has started yet." in text_of(empty)


def test_a_complete_trial_without_an_objective_is_drawn_as_failed(
    sentiment: dict[str, Any],
) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    trials = [*MINIMIZE_TRIALS[:2], trial(2, "Complete", {"training.learningRate": 2e-3})]
    svg = chart(main_tree(search_page.render_search_html("job", spec, trials)), "chart-objective")
    assert (len(points(svg, "complete")), len(points(svg, "failed"))) == (2, 1)
    assert centre(points(svg, "failed")[0])[1] == pytest.approx(plot_bottom(svg))


def test_two_complete_trials_are_too_few_for_importance(sentiment: dict[str, Any]) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    two = MINIMIZE_TRIALS[:2]
    assert search_page.parameter_importance(spec, two) == (
        None,
        "needs 3 completed trials (2 completed)",
    )
    tree = main_tree(search_page.render_search_html("job", spec, two))
    assert len(points(chart(tree, "chart-objective"), "complete")) == 2
    assert tree.find(".//svg[@id='chart-importance']") is None


def test_hostile_strings_stay_text(sentiment: dict[str, Any]) -> None:
    spec = spec_of(sentiment, parameters=[SCHEDULER], objective={"metric": "loss"})
    trials = [
        trial(0, "Complete", {"training.scheduler": "linear"}, objective=0.3),
        trial(1, "Complete", {"training.scheduler": SVG_ONLOAD}, objective=0.2),
        trial(2, "Failed", {"training.scheduler": "cosine", "extra<b>": IMG}),
    ]
    page = search_page.render_search_html(SCRIPT, spec, trials, {"2": IMG})
    parsed = Elements(page)
    names = [name for name, _ in parsed.tags]
    assert {"script", "img", "iframe", "object", "embed", "b"}.isdisjoint(names)
    assert names.count("svg") == 2  # the objective chart and the one slice plot
    assert not [(n, key) for n, attrs in parsed.tags for key in attrs if key.startswith("on")]
    links = [value for _, a in parsed.tags for key, value in a.items() if key.endswith("href")]
    assert links
    assert all(link.startswith("#") for link in links)
    assert not [a for n, a in parsed.tags if "src" in a]
    text = "".join(parsed.text)
    assert text.count(SCRIPT) == 2  # <title> and <h1>
    assert text.count(IMG) == 2  # the note and the extra parameter's cell
    assert SVG_ONLOAD in text  # the cell, the category's tick and tooltips
    assert "extra<b>" in text
    assert tick_labels(chart(main_tree(page), "chart-slice-0"))[:3] == [
        "linear",
        "cosine",
        "constant",
    ]


def test_a_spec_without_search_or_bad_trials_is_a_search_error(sentiment: dict[str, Any]) -> None:
    spec = FineTuneJobSpec.model_validate(sentiment["spec"])
    with pytest.raises(SearchError, match=r"spec\.search"):
        search_page.render_search_html("job", spec, [])
    searching = spec_of(sentiment, parameters=[LEARNING_RATE])
    with pytest.raises(SearchError, match=r"status\.trials"):
        search_page.render_search_html("job", searching, [{"number": 0, "state": "Weird"}])


def test_write_search_html_replaces_the_page_whole(
    tmp_path: Path, sentiment: dict[str, Any]
) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    page = tmp_path / "search.html"
    page.write_text("old")
    assert search_page.write_search_html(page, "job", spec, MINIMIZE_TRIALS) == page
    assert len(rows(main_tree(page.read_text()))) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["search.html"]


@pytest.mark.parametrize(
    ("count", "expected"), [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (50, [0, 10, 20, 30, 40])]
)
def test_the_trial_axis_ticks_whole_trial_numbers_only(
    sentiment: dict[str, Any], count: int, expected: list[int]
) -> None:
    spec = spec_of(
        sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"}, maxTrials=count
    )
    trials = [
        trial(n, "Complete", {"training.learningRate": 1e-4 * (n + 1)}, objective=1 / (n + 2))
        for n in range(count)
    ]
    svg = chart(main_tree(search_page.render_search_html("job", spec, trials)), "chart-objective")
    ticks = x_ticks(svg)
    numbers = [int(label) for label, _ in ticks]  # a label "0.5" or "1,000" would raise here
    assert numbers == expected
    assert all(0 <= n < count for n in numbers)
    drawn = sorted(centre(p)[0] for p in points(svg, "complete"))  # trial n is the n-th
    assert [x for _, x in ticks] == pytest.approx([drawn[n] for n in numbers])


@pytest.mark.parametrize("objectives", [(0.0, 1.0), (-0.5, 5.5), (-0.5, 3.5), (0.413, 0.437)])
def test_the_objective_axis_ticks_round_numbers(
    sentiment: dict[str, Any], objectives: tuple[float, float]
) -> None:
    spec = spec_of(sentiment, parameters=[LEARNING_RATE], objective={"metric": "loss"})
    trials = [
        trial(n, "Complete", {"training.learningRate": 1e-4}, objective=value)
        for n, value in enumerate(objectives)
    ]
    svg = chart(main_tree(search_page.render_search_html("job", spec, trials)), "chart-objective")
    ticks = [float(t.text or "nan") for t in texts(svg, "end")]  # the y axis's labels
    assert len(ticks) >= 3
    step = ticks[1] - ticks[0]
    assert [b - a for a, b in itertools.pairwise(ticks)] == pytest.approx([step] * (len(ticks) - 1))
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(mantissa == pytest.approx(m) for m in (1, 2, 2.5, 5))
    assert [tick / step for tick in ticks] == pytest.approx([round(t / step) for t in ticks])
    assert ticks[0] - step < min(objectives)
    assert max(objectives) < ticks[-1] + step


def test_ticks_are_round_numbers() -> None:
    assert search_page.log_ticks(1e-5, 2e-2) == [1e-5, 1e-4, 1e-3, 1e-2]
    assert search_page.log_ticks(1.5e-4, 9e-4) == pytest.approx([2e-4, 5e-4])
    assert search_page.log_ticks(2.1e-4, 2.3e-4) == [2.1e-4, 2.3e-4]
    assert search_page.whole_ticks(-0.5, 0.5) == [0]
    assert search_page.whole_ticks(-0.5, 11.5) == [0, 5, 10]
    assert search_page.whole_ticks(-0.5, 1499.5) == [0, 500, 1000]
    assert search_page.whole_ticks(0.2, 0.8) == []


# --- where the page is reached from -------------------------------------------------------


def parent(sentiment: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    """A search parent as the API server returns it."""
    sentiment["spec"]["search"] = {"parameters": [LEARNING_RATE], "objective": {"metric": "loss"}}
    sentiment["metadata"] |= {"namespace": "team-a", "uid": "u-1", "resourceVersion": "7"}
    return sentiment | {"status": {"phase": "Running", "trials": trials}}


def test_job_status_draws_a_search_parents_page(sentiment: dict[str, Any]) -> None:
    page = job_status.search_page(parent(sentiment, MINIMIZE_TRIALS))
    tree = main_tree(page)
    assert [css for css, _ in rows(tree)] == ["", "best", "failed", "quiet", "", ""]
    assert text_of(tree.find("header/div/h1")) == "sentiment"  # type: ignore[arg-type]


def test_job_status_refuses_what_is_not_a_search_page(sentiment: dict[str, Any]) -> None:
    plain = dict(sentiment, status={"phase": "Running"})
    with pytest.raises(job_status.PageError, match="sentiment is not a search parent"):
        job_status.search_page(plain)
    gaps = parent(sentiment, [MINIMIZE_TRIALS[1]])
    with pytest.raises(
        job_status.PageError, match=r"team-a/sentiment: status\.trials: trial numbers"
    ):
        job_status.search_page(gaps)


def search_folder(tmp_path: Path, drawn: bool) -> Path:
    report = {"job": "tiny", "kind": "search", "succeeded": True, "trials": []}
    (tmp_path / "report.json").write_text(json.dumps(report))
    if drawn:
        (tmp_path / "search.html").write_text("<!DOCTYPE html>")
    return tmp_path


@pytest.mark.parametrize("drawn", [True, False])
def test_report_of_a_search_folder_names_its_page(tmp_path: Path, drawn: bool) -> None:
    folder = search_folder(tmp_path, drawn)
    report = run_summary.load_report(folder)
    console = Console(width=400, record=True, file=io.StringIO())
    for part in run_summary.renderables(report, folder):
        console.print(part)
    page = (folder / "search.html").resolve()
    suffix = "" if drawn else " (not written)"
    assert f"search.html    {page}{suffix}" in console.export_text()
    assert run_summary.page_path(report, folder) == page
    assert run_summary.summary(report, folder)["searchHtml"] == str(page)


def test_report_open_opens_a_searchs_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = search_folder(tmp_path, drawn=True)
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    result = CliRunner().invoke(cli.app, ["report", str(folder), "--open"])
    assert result.exit_code == 0, result.output
    assert opened == [(folder / "search.html").resolve().as_uri()]
