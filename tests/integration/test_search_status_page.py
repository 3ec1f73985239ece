"""`kubetune status NAME --html FILE` against the Kubernetes emulator: a search parent's page
from its spec and status.trials, and one clear line when there is no such page to draw.

No operator runs here: the trials are written into the parent's status by hand, so every
row the page shows is one the test chose.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from kubetune_operator.cli.views import run_summary
from tests.conftest import load_example
from tests.integration import test_cli_cluster as cli_cluster_tests
from tests.kube.client import KubeClient
from tests.kube.emulator import EmulatorServer

cluster = cli_cluster_tests.cluster
"""The emulator as the current kubeconfig's cluster, the fixture of the CLI cluster tests."""
kubetune = cli_cluster_tests.kubetune

SEARCH = {
    "algorithm": "random",
    "parameters": [
        {"path": "training.learningRate", "type": "float", "min": 1e-5, "max": 1e-3, "log": True},
        {"path": "training.scheduler", "type": "categorical", "choices": ["linear", "cosine"]},
    ],
    "maxTrials": 4,
}
TRIALS = [
    {
        "number": 0,
        "name": "sentiment-trial-0",
        "state": "Complete",
        "params": {"training.learningRate": 1e-4, "training.scheduler": "linear"},
        "objective": 0.81,
    },
    {
        "number": 1,
        "name": "sentiment-trial-1",
        "state": "Complete",
        "params": {"training.learningRate": 3e-4, "training.scheduler": "cosine"},
        "objective": 0.87,
    },
    {
        "number": 2,
        "name": "sentiment-trial-2",
        "state": "Pruned",
        "params": {"training.learningRate": 1e-5, "training.scheduler": "cosine"},
        "intermediate": {"10": 0.52},
    },
    {
        "number": 3,
        "name": "sentiment-trial-3",
        "state": "Running",
        "params": {"training.learningRate": 6e-4, "training.scheduler": "linear"},
    },
]


def created(kube: KubeClient, search: dict[str, Any] | None) -> None:
    """The sentiment example in the cluster, a search parent when `search` is given."""
    manifest = copy.deepcopy(load_example("sentiment/job.yaml"))
    if search is not None:
        manifest["spec"]["search"] = search
    kube.create(manifest)


def page_rows(page: Path) -> list[tuple[str, list[str]]]:
    text = page.read_text(encoding="utf-8")
    main = text[text.index("<main>") : text.index("</main>") + len("</main>")]
    tree = ET.fromstring(main.replace(' xmlns="http://www.w3.org/2000/svg"', ""))
    body = tree.find(".//table[@class='trials']/tbody")
    assert body is not None
    return [(tr.get("class", ""), ["".join(td.itertext()) for td in tr]) for tr in body]


def test_status_html_draws_a_search_parents_page(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    created(kube, SEARCH)
    status = {"phase": "Running", "trials": TRIALS}
    kube.patch("FineTuneJob", "sentiment", {"status": status}, subresource="status")
    folder = tmp_path / "pages"
    folder.mkdir()
    page = folder / "search.html"
    result = kubetune("status", "sentiment", "--html", str(page))
    assert result.exit_code == 0, result.output
    assert f"wrote {page}: the search page of FineTuneJob default/sentiment (4 trials)" in (
        " ".join(result.output.split())
    )
    rows = page_rows(page)
    assert [cells[1] for _, cells in rows] == [t["name"] for t in TRIALS]
    assert [css for css, _ in rows] == ["", "best", "quiet", ""]
    assert rows[1][1][:3] == ["1 ★", "sentiment-trial-1", "Complete"]
    assert rows[1][1][3:6] == ["0.0003", "cosine", "0.87"]
    assert rows[2][1][5] == "0.52"  # the pruned trial's last value
    assert page.read_text().count('class="point complete"') == 2 * 3  # objective and 2 slices
    assert [p.name for p in folder.iterdir()] == [run_summary.SEARCH_HTML]  # no leftovers


def test_status_html_refuses_a_job_that_is_not_a_search(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    created(kube, None)
    page = tmp_path / "search.html"
    result = kubetune("status", "sentiment", "--html", str(page))
    assert result.exit_code == 1
    assert "FineTuneJob default/sentiment is not a search parent" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not page.exists()


def test_status_html_into_a_missing_folder_asks_nothing_of_the_cluster(
    cluster: EmulatorServer, kube: KubeClient, tmp_path: Path
) -> None:
    created(kube, SEARCH)
    result = kubetune("status", "sentiment", "--html", str(tmp_path / "no-such" / "page.html"))
    assert result.exit_code == 1
    assert f"the folder {tmp_path / 'no-such'} does not exist" in " ".join(result.output.split())
    both = kubetune("status", "sentiment", "--html", str(tmp_path / "page.html"), "--watch")
    assert both.exit_code == 1
    assert "leave out --watch and --json" in both.output
    assert cli_cluster_tests.cli_requests(cluster) == []
    assert list(tmp_path.iterdir()) == [tmp_path / "kubeconfig"] or not list(
        tmp_path.glob("*.html")
    )
