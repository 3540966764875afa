"""tools/run_few_shot.py and tools/few_shot_protocol.py: the shots x seeds grid, resume and the results table.

The per-run work is injected (a fake runner writing metrics files), so these tests run no model. Expected
table values are computed here with NumPy from the values the fake runner wrote.
"""

import csv
import json
import math

import numpy as np
import pytest

from tools.few_shot_protocol import (
    METRICS,
    ProtocolError,
    RunSpec,
    SubprocessRunner,
    latest_checkpoint,
    parse_seeds,
    plan_runs,
    read_metrics,
    run_grid,
)

NAMES = METRICS[("coco", "gfsod")]


def test_parse_seeds_ranges_lists_and_errors():
    assert parse_seeds(["0-9"]) == list(range(10))
    assert parse_seeds(["0", "3,5", "4-5"]) == [0, 3, 5, 4]
    for bad in (["a"], ["5-2"], ["-1"], []):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_plan_runs_grid_and_names(tmp_path):
    tfa = plan_runs([1, 2, 3], [0, 1], 1, tmp_path)
    assert len(tfa) == 6
    assert {(s.shot, s.seed) for s in tfa} == {(k, s) for k in (1, 2, 3) for s in (0, 1)}
    assert all(s.repeat is None and s.run_dir == tmp_path / f"{s.shot}shot_seed{s.seed}" for s in tfa)
    fsrw = plan_runs([1, 10], [0], 3, tmp_path)
    assert len(fsrw) == 6 and len({s.run_dir for s in fsrw}) == 6
    assert fsrw[0].run_dir.name == "1shot_seed0_repeat0" and fsrw[-1].run_dir.name == "10shot_seed0_repeat2"
    assert [s.shot for s in fsrw[:2]] == [1, 10]  # every shot gets its first run before any repeat
    with pytest.raises(ValueError):
        plan_runs([1, 1], [0], 1, tmp_path)
    with pytest.raises(ValueError):
        plan_runs([1], [0], 0, tmp_path)


class FakeRunner:
    """Writes a metrics.json of random fractions per run; optionally fails on the n-th call."""

    def __init__(self, fail_at=None, seed=0):
        self.calls = []
        self.fail_at = fail_at
        self.rng = np.random.default_rng(seed)
        self.written = {}

    def __call__(self, spec: RunSpec):
        self.calls.append(spec.name)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError(f"simulated crash in {spec.name}")
        values = {name: float(self.rng.uniform(0.01, 0.6)) for name in NAMES}
        self.written[spec.name] = values
        spec.metrics_path.parent.mkdir(parents=True)
        spec.metrics_path.write_text(json.dumps({"bbox": {**values, "AP50": 0.5}, "num_images": 3}))


def _expected_rows(specs, written):
    rows = {}
    for shot in sorted({s.shot for s in specs}):
        runs = [written[s.name] for s in specs if s.shot == shot]
        row = {"shot": shot, "runs": len(runs)}
        for name in NAMES:
            values = np.array([100.0 * r[name] for r in runs])
            row[name] = values.mean()
            row[name + "_ci95"] = 1.96 * np.sqrt(((values - values.mean()) ** 2).mean()) / math.sqrt(len(values))
        rows[shot] = row
    return rows


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_table_and_resume_after_a_crash(tmp_path):
    specs = plan_runs([1, 5], [0, 1, 2], 1, tmp_path)
    crashing = FakeRunner(fail_at=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_grid(specs, crashing, NAMES, tmp_path)
    # The three runs before the crash are in the tables already.
    assert len(_read_csv(tmp_path / "runs.csv")) == 3

    resumed = FakeRunner(seed=1)
    results = run_grid(specs, resumed, NAMES, tmp_path)
    assert resumed.calls == [s.name for s in specs[3:]]  # finished runs are read, not rerun
    written = {**crashing.written, **resumed.written}
    assert [spec for spec, _ in results] == specs
    for spec, metrics in results:
        assert metrics == pytest.approx({k: 100 * v for k, v in written[spec.name].items()})

    expected = _expected_rows(specs, written)
    rows = _read_csv(tmp_path / "results.csv")
    assert [int(r["shot"]) for r in rows] == [1, 5] and all(int(r["runs"]) == 3 for r in rows)
    for row in rows:
        for key, value in expected[int(row["shot"])].items():
            assert float(row[key]) == pytest.approx(value, rel=1e-9), key
    markdown = (tmp_path / "results.md").read_text()
    first = expected[1]
    assert f"{first['nAP']:.2f} ± {first['nAP_ci95']:.2f}" in markdown
    per_run = _read_csv(tmp_path / "runs.csv")
    assert [(int(r["shot"]), int(r["seed"])) for r in per_run] == [(s.shot, s.seed) for s in specs]
    assert float(per_run[4]["bAP"]) == pytest.approx(100 * written[specs[4].name]["bAP"])

    # A third invocation runs nothing and gives the same table.
    idle = FakeRunner()
    run_grid(specs, idle, NAMES, tmp_path)
    assert idle.calls == [] and _read_csv(tmp_path / "results.csv") == rows


def test_runner_without_metrics_and_bad_metrics_are_errors(tmp_path):
    specs = plan_runs([1], [0], 1, tmp_path)
    with pytest.raises(ProtocolError, match="without"):
        run_grid(specs, lambda spec: None, NAMES, tmp_path)
    specs[0].metrics_path.parent.mkdir(parents=True)
    specs[0].metrics_path.write_text(json.dumps({"bbox": {"AP": 0.1}}))
    with pytest.raises(ProtocolError, match="nAP"):
        read_metrics(specs[0].metrics_path, NAMES)
    specs[0].metrics_path.write_text(json.dumps({"bbox": {"nAP50": None}}))
    assert math.isnan(read_metrics(specs[0].metrics_path, ["nAP50"])["nAP50"])


def test_subprocess_runner_commands_resume_and_skip_training(tmp_path):
    configs = {1: tmp_path / "c1.yaml", 2: tmp_path / "c2.yaml"}
    runner = SubprocessRunner(configs, "fsod", tmp_path / "reset.ckpt", "/data/coco", tmp_path / "mr", "CPU",
                              ["eval.pcb=true"], train_seed=42, dry_run=True)
    spec = plan_runs([2], [3], 2, tmp_path)[1]  # 2-shot, seed 3, repeat 1
    runner(spec)
    train_cmd, eval_cmd = runner.commands
    assert train_cmd[1].endswith("train.py") and eval_cmd[1].endswith("eval.py")
    assert train_cmd[train_cmd.index("--config") + 1] == str(configs[2])
    assert "--pretrained_partial" in train_cmd and "--resume" not in train_cmd
    sets = train_cmd[train_cmd.index("--set") + 1:]
    # The user's overrides come first so that the run's own shot, seed and repeat seed always win.
    assert sets == ["eval.pcb=true", "data.shot=2", "data.seed=3", "train.seed=43"]
    assert eval_cmd[eval_cmd.index("--set") + 1:] == sets
    assert eval_cmd[eval_cmd.index("--output_dir") + 1] == str(spec.eval_dir)

    # A stopped training resumes from its latest checkpoint.
    ckpt_dir = spec.train_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    for name in ("defrcn-1_5.ckpt", "defrcn-2_40.ckpt", "defrcn-3_12.ckpt", "notes.ckpt"):
        (ckpt_dir / name).write_bytes(b"")
    assert latest_checkpoint(spec.train_dir) == ckpt_dir / "defrcn-2_40.ckpt"
    runner.commands.clear()
    runner(spec)
    assert runner.commands[0][runner.commands[0].index("--resume") + 1] == str(ckpt_dir / "defrcn-2_40.ckpt")

    # A finished training is not run again: only the evaluation, on the recorded checkpoint.
    (spec.run_dir / "train_done.json").write_text(json.dumps({"checkpoint": "/x/final.ckpt"}))
    runner.commands.clear()
    runner(spec)
    assert len(runner.commands) == 1 and runner.commands[0][runner.commands[0].index("--checkpoint") + 1] == \
        "/x/final.ckpt"

    gfsod = SubprocessRunner(configs, "gfsod", tmp_path / "s.ckpt", "/data/coco", tmp_path / "mr", dry_run=True)
    single = plan_runs([1], [7], 1, tmp_path / "g")[0]
    gfsod(single)
    assert "--pretrained_partial" not in gfsod.commands[0]
    assert gfsod.commands[0][gfsod.commands[0].index("--set") + 1:] == ["data.shot=1", "data.seed=7"]
    assert not any("--pynative" in cmd for cmd in gfsod.commands)
    quick = SubprocessRunner(configs, "gfsod", tmp_path / "s.ckpt", "/data/coco", tmp_path / "mr", dry_run=True,
                             pynative=True)
    quick(single)
    assert len(quick.commands) == 2 and all(cmd.index("--pynative") < cmd.index("--set") for cmd in quick.commands)


def test_cli_dry_run_resolves_the_shipped_configs(tmp_path, caplog, capsys):
    from tools.run_few_shot import main

    common = ["--base_ckpt", str(tmp_path / "base.ckpt"), "--coco_path", "/data", "--output_dir", str(tmp_path),
              "--dry_run"]
    with caplog.at_level("INFO"):
        assert main(["--dataset", "coco", "--setting", "fsod", "--shots", "1", "30", *common]) == 0
    commands = [r.getMessage() for r in caplog.records if r.getMessage().startswith("would run: ")]
    assert len(commands) == 2 * 2 * 10  # train + eval, 2 shots, FSRW-like default: seed 0 repeated 10 times
    assert "defrcn_fsod_r101_novel_coco_30shot.yaml" in commands[3] and "train.seed=51" in commands[-1]
    assert "remove" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["--dataset", "voc", "--split", "3", "--setting", "gfsod", "--shots", "5", *common]) == 0
    commands = [r.getMessage() for r in caplog.records if r.getMessage().startswith("would run: ")]
    assert len(commands) == 2 * 10 and "defrcn_gfsod_r101_novel3_voc_5shot.yaml" in commands[0]  # seeds 0-9
    assert main(["--dataset", "voc", "--split", "1", "--setting", "fsod", "--shots", "30", *common]) == 1
    assert "no fine-tune config for 30-shot voc fsod" in capsys.readouterr().err
