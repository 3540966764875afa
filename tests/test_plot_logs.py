"""tools/plot_logs.py: several runs' metrics.jsonl on one figure; clear one-line errors."""

import json

import pytest

from src.cli import run as run_entry_point
from tools.plot_logs import main


def _run_dir(path, losses):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": step, "epoch": 0, "loss": loss, "lr": 1e-4}) + "\n")
    return path


def test_two_runs_on_one_png(tmp_path, capsys):
    runs = [_run_dir(tmp_path / "a", [3.0, 2.0, 1.0]), _run_dir(tmp_path / "b", [4.0, 3.5])]
    output = tmp_path / "curves.png"
    with pytest.raises(SystemExit) as exit_info:
        run_entry_point(main, [str(runs[0]), str(runs[1]), "--keys", "loss", "lr", "--output", str(output)])
    assert exit_info.value.code == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {output}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_one_run_defaults_to_its_folder(tmp_path):
    run = _run_dir(tmp_path / "a", [1.0, 0.5])
    with pytest.raises(SystemExit) as exit_info:
        run_entry_point(main, [str(run)])
    assert exit_info.value.code == 0
    assert (run / "loss_curve.png").is_file()


@pytest.mark.parametrize("setup, message", [
    (lambda d: d.mkdir(), "metrics.jsonl: no such file"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')), "metrics.jsonl:2: not JSON"),
    (lambda d: _run_dir(d, [1.0]), "no value of 'loss_giou'"),
])
def test_bad_input_is_one_line_naming_the_file_or_key(tmp_path, capsys, setup, message):
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(SystemExit) as exit_info:
        run_entry_point(main, [str(run), "--keys", "loss_giou", "--output", str(tmp_path / "out.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out.png").exists()
