"""Input mistakes end in one line; outputs honour the umask; stale temporaries go; errors name the right thing.

Covers src/cli.py (one-line ``error: ...`` with exit 2, traceback on request), src/config.py's typed ``--set``,
src/fileio.py (mode, stale ``.tmp-<host>-<pid>-...`` files), export.py's default location, and the messages for
an empty split, a non-numeric VOC field and a checkpoint of another model. One subprocess (train.py, which fails
on its config before importing any model); the rest calls the functions directly.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import export as export_cli
from src.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    load_pretrained,
    save_checkpoint,
)
from src.cli import run
from src.config import ConfigError, load_config
from src.data.coco import EmptySplitError
from src.data.mindrecord import convert_source
from src.data.sources import coco_split_source
from src.data.voc import VocFormatError, parse_voc_xml
from src.errors import InputError
from src.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "detr" / "detr_tiny.yaml"


def test_set_type_error_is_one_line_before_any_output(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "--config", str(TINY), "--coco_path",
                           str(shared_data / "coco_tiny"), "--output_dir", str(run_dir), "--set", "train.lr=abc"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "DETZOO_DEBUG"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "train.py: error: --set train.lr=abc: train.lr must be a number (default: 0.0001), got 'abc' (str)")
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("override, message", [
    ("model.num_queries=1.5", r"model\.num_queries must be an integer \(default: 100\), got 1\.5 \(float\)"),
    ("model.aux_loss=1", r"model\.aux_loss must be a boolean .*got 1 \(int\)"),
    ("model.num_queries=true", r"model\.num_queries must be an integer .*got True \(bool\)"),
    ("data.train_scales=[128, abc]", r"data\.train_scales\[1\] must be an integer .*got 'abc'"),
])
def test_set_values_are_type_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_set_values_that_fit_are_converted():
    cfg = load_config(TINY, ["train.lr=1", "data.train_split=2017", "data.fixed_size=[96, 96]", "train.lr_drop=7"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["data"]["train_split"] == "2017"  # a string key keeps the text as typed
    assert cfg["data"]["fixed_size"] == [96, 96]  # null default: anything
    assert cfg["train"]["lr_drop"] == 7


def test_a_key_with_two_kinds_of_value_takes_both():
    defrcn = ROOT / "configs" / "defrcn" / "defrcn_tiny_base_coco.yaml"
    assert load_config(defrcn, ["model.depth=[1, 2, 1, 1]"])["model"]["depth"] == [1, 2, 1, 1]
    assert load_config(defrcn, ["model.depth=50"])["model"]["depth"] == 50
    with pytest.raises(ConfigError, match=r"model\.depth must be an integer"):
        load_config(defrcn, ["model.depth=1.5"])


def _fail(argv):
    raise InputError(f"bad input file 'x.json' (argv {argv}); fix it")


def test_run_prints_one_line_and_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("DETZOO_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(_fail, ["--a", "1"], prog="tool.py")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "tool.py: error: bad input file 'x.json' (argv ['--a', '1']); fix it\n"
    with pytest.raises(SystemExit) as exit_info:
        run(lambda argv: 3, [])
    assert exit_info.value.code == 3


def test_run_gives_the_traceback_on_request(monkeypatch):
    monkeypatch.delenv("DETZOO_DEBUG", raising=False)
    with pytest.raises(InputError, match=r"argv \['--a'\]"):  # --debug is removed before main sees argv
        run(_fail, ["--a", "--debug"])
    monkeypatch.setenv("DETZOO_DEBUG", "1")
    with pytest.raises(InputError):
        run(_fail, [])
    with pytest.raises(ZeroDivisionError):  # a bug is never turned into an input error
        run(lambda argv: 1 / 0, [])


@pytest.fixture()
def umask():
    def set_mask(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def test_outputs_honour_the_umask(tmp_path, umask):
    ckpt = save_checkpoint(tmp_path / "net.ckpt", nn.Dense(2, 2))  # MindSpore itself leaves 0400
    text = atomic_write_text(tmp_path / "a.json", "{}")
    assert oct(ckpt.stat().st_mode & 0o777) == oct(0o644)
    assert oct(text.stat().st_mode & 0o777) == oct(0o644)
    umask(0o077)
    assert atomic_write_text(tmp_path / "b.json", "{}").stat().st_mode & 0o777 == 0o600


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale_file = tmp_path / f".tmp-{host}-{dead.pid}-0123abcd-net.ckpt"
    stale_dir = tmp_path / f".tmp-{host}-{dead.pid}-4567abcd-train"
    live = tmp_path / f".tmp-{host}-{os.getpid()}-89abcdef-metrics.json"
    other_host = tmp_path / f".tmp-{host}x-{dead.pid}-0123abcd-net.ckpt"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "train.mindrecord").write_bytes(b"half")
    live.write_text("being written")
    other_host.write_bytes(b"another machine's")

    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name, "config.yaml"])


def test_export_writes_beside_the_checkpoint_by_default(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "detr-3_30.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    written = []
    monkeypatch.setattr(export_cli, "build_inference_net", lambda cfg, path: None)
    monkeypatch.setattr(export_cli, "export_graph",
                        lambda net, inputs, file_name, fmt, device: written.append(file_name) or file_name)
    export_cli.main(["--config", str(TINY), "--checkpoint", str(checkpoint)])
    export_cli.main(["--config", str(TINY), "--checkpoint", str(checkpoint), "--file_name", str(tmp_path / "m")])
    assert written == [str(tmp_path / "run" / "detr-3_30"), str(tmp_path / "m")]


def test_an_empty_split_names_its_annotation_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "empty2017").mkdir()
    ann = tmp_path / "annotations" / "instances_empty2017.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    message = rf"data source coco_empty2017_all has no image left .*read from {re.escape(str(ann))}"
    with pytest.raises(EmptySplitError, match=message) as info:
        convert_source(coco_split_source(tmp_path, "empty2017"), tmp_path / "mr")
    assert "shards" not in str(info.value)
    assert not (tmp_path / "mr").exists() or not any((tmp_path / "mr").iterdir())


def test_a_non_numeric_voc_coordinate_names_file_and_field(tmp_path):
    xml = tmp_path / "Annotations" / "000005.xml"
    xml.parent.mkdir()
    xml.write_text("<annotation><size><width>500</width><height>375</height></size><object><name>chair</name>"
                   "<bndbox><xmin>263</xmin><ymin>2l1</ymin><xmax>324</xmax><ymax>339</ymax></bndbox></object>"
                   "</annotation>")
    with pytest.raises(VocFormatError, match=rf"{xml}: <ymin> of object 'chair' is '2l1', not a number"):
        parse_voc_xml(xml)


class _DetrLike(nn.Cell):
    """Parameter names of DETR's heads (query_embed.embedding_table, class_embed.*)."""

    def __init__(self):
        super().__init__()
        self.query_embed = nn.Embedding(4, 2)
        self.class_embed = nn.Dense(2, 3)


def _save(path, names):
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(np.zeros(2, np.float32))} for n in names], str(path))
    return path


def test_a_checkpoint_of_another_model_is_named_not_dumped(tmp_path):
    defrcn_keys = ["affine_rpn.weight", "affine_rcnn.weight"] + [f"roi_heads.res5.{i}.conv.weight" for i in range(300)]
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(_save(tmp_path / "defrcn.ckpt", defrcn_keys), _DetrLike())
    message = str(info.value)
    assert "is a DeFRCN checkpoint but the config builds DETR" in message
    assert "302 unexpected" in message and "and 299 more" in message
    assert len(message) < 800 and "\n" not in message

    torch_names = ["backbone.0.body.conv1.weight", "backbone.0.body.bn1.running_mean", "query_embed.weight"]
    with pytest.raises(CheckpointMismatchError, match="PyTorch state dict .*tools/convert_weights.py"):
        load_pretrained(_save(tmp_path / "named_like_torch.ckpt", torch_names), _DetrLike())


def test_a_pytorch_file_is_recognised(tmp_path):
    import torch  # requirements-dev.txt
    path = tmp_path / "detr-r50.ckpt"
    torch.save({"class_embed.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointFormatError, match=r"is a PyTorch file.*tools/convert_weights\.py"):
        load_pretrained(path, _DetrLike())
