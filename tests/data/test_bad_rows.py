"""Bad JSONL input of a registered task, seen through `flan-jax show`: exit 2, one line."""

import json
import sys

import pytest
import seqio

from flan_jax import cli

MODULE = '''
import seqio
from flan_jax.data.flan import FlanTask, register_flan_task
from flan_jax.data.sources import jsonl_source
from flan_jax.data.templates import Template

source = jsonl_source({{"train": {train!r}, "validation": {validation!r}}},
                      schema={{"country": str, "capital": str}})
NAMES = register_flan_task(FlanTask(name={name!r}, source=source, templates=[
    Template("What is the capital of {{country}}?", "{{capital}}")]), seqio.ByteVocabulary(),
    replace=True)
'''
GOOD = "".join(json.dumps({"country": f"C{i}", "capital": f"K{i}"}) + "\n" for i in range(3))


@pytest.fixture
def task(tmp_path, monkeypatch):
    """Writes and registers a task module over a train file of the test's bytes."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # (else `--module` adds the cwd for good)
    made = []

    def make(name: str, train: bytes) -> str:
        (tmp_path / "train.jsonl").write_bytes(train)
        (tmp_path / "validation.jsonl").write_text(GOOD)
        (tmp_path / f"{name}.py").write_text(MODULE.format(
            name=name, train=str(tmp_path / "train.jsonl"),
            validation=str(tmp_path / "validation.jsonl")))
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)  # (absent where its import failed)
        for registered in [n for n in seqio.TaskRegistry.names() if n.split(":")[0] == name]:
            seqio.TaskRegistry.remove(registered)


@pytest.mark.parametrize("name,train,error", [
    ("bad_rows_empty", b"", "train.jsonl: no rows for the 'train' split (the file is empty)"),
    ("bad_rows_blank", b"\n \n", "train.jsonl: no rows for the 'train' split (the file has "
                                 "only blank lines)"),
    ("bad_rows_utf8", GOOD.encode() + b'{"country": "\xff", "capital": "x"}\n',
     "train.jsonl:4: invalid UTF-8 at column 14 (byte 0xff: invalid start byte)"),
])
def test_show_names_the_file_in_one_line_and_exits_2(task, capsys, name, train, error):
    assert cli.main(["show", f"{task(name, train)}:zs_noopt", "--module", name, "--n", "5"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"{error}\n") and err.count("\n") == 1, err


def test_rates_over_an_empty_file_name_it_instead_of_asking_for_sizes(task, capsys):
    """A mixture module that sizes its tasks (mixing.task_rates) on import: the empty file's
    own error comes through (the source counting it was once taken for "can't count")."""
    name = task("bad_rows_rates", b"")
    path = f"{name}.py"
    with open(path, "a") as f:
        f.write("\nfrom flan_jax.data import mixing\n"
                "RATES = mixing.task_rates([n for n in NAMES if n.endswith(':zs_noopt')],"
                " cap=100)\n")
    assert cli.main(["show", f"{name}:zs_noopt", "--module", name, "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl: no rows for the 'train' split" in err and err.count("\n") == 1, err
