"""`kubetune run` of a search keeps OUTPUT/search.html beside search.json: rewritten as each
trial starts and ends (a real tiny search on CPU), one row per trial, named by report.json
and by `kubetune report`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kubetune_operator.cli.app import app
from kubetune_operator.cli.local import runs
from tests.integration import test_local_search as local_search_tests

job_folder = local_search_tests.job_folder
"""The tiny job's folder, the fixture of the local-search tests."""

SEARCH = """\
    algorithm: random
    parameters:
      - {path: training.learningRate, type: float, min: 0.0001, max: 0.01, log: true}
    maxTrials: 3
    seed: 7
"""


def page_rows(page: Path) -> list[tuple[str, list[str]]]:
    """The trials table of search.html: (row class, cell texts) per row."""
    text = page.read_text(encoding="utf-8")
    main = text[text.index("<main>") : text.index("</main>") + len("</main>")]
    tree = ET.fromstring(main.replace(' xmlns="http://www.w3.org/2000/svg"', ""))
    body = tree.find(".//table[@class='trials']/tbody")
    assert body is not None
    return [(tr.get("class", ""), ["".join(td.itertext()) for td in tr]) for tr in body]


def chart_points(page: Path, chart_id: str) -> int:
    text = page.read_text(encoding="utf-8")
    start = text.index(f'id="{chart_id}"')
    return text[start : text.index("</svg>", start)].count('class="point complete"')


def test_a_local_search_rewrites_its_page_after_every_trial(
    job_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = job_folder / "out"
    page = out / "search.html"
    seen: list[list[tuple[str, str]]] = []
    real = runs.run_in_process

    def train_and_look(run: runs.LocalRun) -> dict[str, Any]:
        seen.append([(cells[1], cells[2]) for _, cells in page_rows(page)])
        return real(run)

    monkeypatch.setattr("kubetune_operator.cli.local.searches.run_in_process", train_and_look)
    manifest = local_search_tests.write_job(job_folder, SEARCH)
    code, output = local_search_tests.run(str(manifest))
    assert code == 0, output

    # As trial n starts, the page shows the n finished trials and trial n running.
    names = [f"tiny-trial-{n}" for n in range(3)]
    assert seen == [
        [(names[0], "Running")],
        [(names[0], "Complete"), (names[1], "Running")],
        [(names[0], "Complete"), (names[1], "Complete"), (names[2], "Running")],
    ]
    search = json.loads((out / "search.json").read_text())
    best = search["bestTrial"]["number"]
    rows = page_rows(page)
    assert len(rows) == 3 == len(search["trials"])
    assert [css == "best" for css, _ in rows] == [n == best for n in range(3)]
    for (_, cells), trial in zip(rows, search["trials"], strict=True):
        assert cells[1] == trial["name"]
        assert cells[2] == "Complete"
        assert cells[4] == f"{trial['objective']:.4g}"
    assert chart_points(page, "chart-objective") == 3
    assert chart_points(page, "chart-slice-0") == 3
    assert not list(out.glob(".*.partial"))

    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["searchHtml"] == str(page)
    assert f"search.html    {page.resolve()}" in output
    shown = CliRunner().invoke(app, ["report", str(out)], env={"COLUMNS": "240"})
    assert shown.exit_code == 0, shown.output
    assert f"search.html    {page.resolve()}" in shown.output
