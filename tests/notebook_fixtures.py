"""The demo store the notebook tests execute against (built once per session), and readers of an
executed notebook's outputs. Registered in tests/conftest.py, so every test module can take
``demo_store`` as an argument."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

from notebooks.demo_store import StoreInfo, build


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> StoreInfo:
    """:func:`notebooks.demo_store.build` under a session temporary folder (about a minute of tiny
    real runs). ``RETENTION_DEMO_STORE=DIR`` reuses (or builds once into) ``DIR`` instead, for
    working on a notebook without rebuilding."""
    reuse = os.environ.get("RETENTION_DEMO_STORE")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("demo-store")
    info_file = root / "store.json"
    if info_file.is_file():
        return StoreInfo(**json.loads(info_file.read_text()))
    info = build(root)
    info_file.write_text(info.to_json())
    return info


@dataclass
class Outputs:
    """What an executed notebook produced: the printed text of each code cell, the number of PNG
    figures, the errors (``ename: evalue``) and the HTML of displayed DataFrames."""

    text: list[str] = field(default_factory=list)
    images: int = 0
    errors: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    @property
    def all_text(self) -> str:
        return "\n".join(self.text)


def read_outputs(path: Path) -> Outputs:
    out = Outputs()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        printed = []
        for o in cell.get("outputs", []):
            if o.output_type == "stream" and o.name == "stdout":
                printed.append(o.text)
            elif o.output_type == "error":
                out.errors.append(f"{o.ename}: {o.evalue}")
            elif o.output_type in ("display_data", "execute_result"):
                out.images += "image/png" in o.data
                if "text/html" in o.data:
                    out.html.append(o.data["text/html"])
        out.text.append("".join(printed))
    return out
