"""The config tree (OmegaConf YAML) and its structured schema; ships with the package so the
CLI works outside the repository."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
