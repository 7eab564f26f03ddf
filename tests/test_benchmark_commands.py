"""The six-benchmark table of docs/results.md: every command in its "ours" cells composes
(``retention train ... --print-config`` exits 0). The models cannot be downloaded here, so a Hugging
Face cache holding only each model's ``config.json`` stands in: the config check reads the model type,
the layer count and the position table from it, nothing else."""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub.constants
import pytest

from commands import cli
from commands.backbone_checks import backbone_config

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## The paper's six benchmarks"
# The config.json fields of the presets' backbones (as published on the hub) that the check reads.
CONFIGS = {
    "distilbert-base-uncased": {"model_type": "distilbert", "n_layers": 6, "dim": 768, "n_heads": 12,
                                "max_position_embeddings": 512, "vocab_size": 30522, "pad_token_id": 0},
    "allenai/longformer-base-4096": {"model_type": "longformer", "num_hidden_layers": 12, "hidden_size": 768,
                                     "max_position_embeddings": 4098, "attention_window": [512] * 12,
                                     "vocab_size": 50265, "pad_token_id": 1},
    "facebook/bart-base": {"model_type": "bart", "encoder_layers": 6, "decoder_layers": 6, "d_model": 768,
                           "max_position_embeddings": 1024, "vocab_size": 50265, "pad_token_id": 1},
}


def table_commands() -> list[str]:
    """The overrides of every ``retention train`` command in the section's "not run" cells."""
    section = (ROOT / "docs" / "results.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "not run" in line]
    return sorted({c for row in rows for c in re.findall(r"`retention train ([^`]*)`", row)})


@pytest.fixture
def config_only_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache with one snapshot per model of :data:`CONFIGS`, holding config.json only."""
    revision = "0" * 40
    for repo, config in CONFIGS.items():
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        (folder / "snapshots" / revision).mkdir(parents=True)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(revision)
        (folder / "snapshots" / revision / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    backbone_config.cache_clear()  # configs looked up before (not found) must be looked up again
    yield
    backbone_config.cache_clear()


def test_every_command_of_the_six_benchmark_table_composes(config_only_cache, capsys):
    commands = table_commands()
    assert len(commands) == 12  # six benchmarks at two budgets
    for overrides in commands:
        assert cli.main(["train", *overrides.split(), "--print-config"]) == 0, (overrides, capsys.readouterr().err)
    # as the page says: the QASPER preset's own backbone (Longformer) is refused with a config error
    capsys.readouterr()
    assert cli.main(["train", "data=qasper", "--print-config"]) == 2
    assert "model type 'longformer'" in capsys.readouterr().err
