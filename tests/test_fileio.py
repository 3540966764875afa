"""src/fileio.py: the final file appears only when writing succeeds."""

import pytest

from src.fileio import atomic_output, atomic_write_text


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.ckpt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_output(target) as tmp:
            assert tmp.suffix == ".ckpt" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.ckpt"]
