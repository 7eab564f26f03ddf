"""The one ``Method`` Enum: what each method is, and the config field typed with it (no torch)."""

import subprocess
import sys
from pathlib import Path

import pytest

from conf.compose import compose
from conf.schema import ConfigError
from retention.methods import Method

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_is_exactly_one_kind():
    kinds = {m: (m == Method.gate, m.is_heuristic, m == Method.ltp, m.is_sparse) for m in Method}
    assert all(sum(k) == 1 for k in kinds.values())
    assert [m for m in Method if m.is_heuristic] == ["random", "first", "l2", "attention"]
    assert [m for m in Method if m.trains_scorer] == ["gate", "ltp"]
    assert [m for m in Method if m.is_sparse] == ["longformer", "bigbird"]
    assert {m: m.selection for m in Method} == {
        "gate": "gate", "random": "random", "first": "first", "l2": "l2", "attention": "attention",
        "ltp": "gate", "longformer": "gate", "bigbird": "gate"}


def test_members_read_as_users_type_them():
    assert [m.name for m in Method] == [m.value for m in Method] == [str(m) for m in Method]
    assert f"{Method.l2}" == "l2" and Method("ltp") is Method.ltp


@pytest.mark.parametrize("method", list(Method))
def test_config_method_is_checked_by_the_enum_and_handed_out_as_its_string(method):
    """OmegaConf checks ``method`` against :class:`Method`; compose hands out the plain string (what the
    printed config, config.yaml and MLflow params hold), which names the same member."""
    value = compose([f"method={method}"]).method
    assert type(value) is str and Method(value) is method


def test_a_bad_method_in_a_config_file_names_the_valid_ones(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: magic\n")
    with pytest.raises(ConfigError, match="method.*gate, random, first, l2, attention, ltp, longformer, bigbird"):
        compose([], config_file=bad)


def test_the_schema_imports_no_torch():
    code = "import sys, conf.schema, retention.methods; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "False"
