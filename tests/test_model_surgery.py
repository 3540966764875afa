"""DeFRCN box-predictor surgery (src/models/defrcn/surgery.py, tools/model_surgery.py) on small fake checkpoints.

Source rows carry their own index as value, so each copied row can be traced; expected destinations are worked
out by hand from the COCO id order and DeFRCN's VOC split lists.
"""

import importlib.util
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from src.models.defrcn.surgery import (
    BOX_BIAS,
    BOX_WEIGHT,
    CLS_BIAS,
    CLS_WEIGHT,
    PREDICTOR_KEYS,
    SurgeryError,
    model_surgery,
)

DIM = 6
REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("model_surgery_tool", REPO / "tools" / "model_surgery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source(path: Path, num_base: int, drop=()):
    """Fake base checkpoint: row i of every predictor tensor holds i + offset; plus a backbone weight and
    optimizer state listed the way src/checkpoint.py does."""
    rows_cls = np.arange(num_base + 1, dtype=np.float32)
    rows_box = np.arange(4 * num_base, dtype=np.float32)
    tensors = {
        "backbone.stem.conv1.weight": np.full((2, 3, 1, 1), 7.0, np.float32),
        CLS_WEIGHT: np.repeat(rows_cls[:, None] + 1.0, DIM, axis=1),
        CLS_BIAS: rows_cls + 0.5,
        BOX_WEIGHT: np.repeat(rows_box[:, None] + 1000.0, DIM, axis=1),
        BOX_BIAS: rows_box + 2000.0,
        "exp_avg.backbone.stem.conv1.weight": np.ones((2, 3, 1, 1), np.float32),
    }
    save = [{"name": k, "data": ms.Tensor(v)} for k, v in tensors.items() if k not in drop]
    ms.save_checkpoint(save, str(path), append_dict={"epoch": 3, "step": 99,
                                                     "optimizer_state_keys": "exp_avg.backbone.stem.conv1.weight",
                                                     "extra_keys": ""})
    return tensors


def _load(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def test_randinit_coco_moves_rows_by_coco_id(tmp_path):
    src, out = tmp_path / "base.ckpt", tmp_path / "surgery.ckpt"
    _source(src, 60)
    assert _tool().main(["--method", "randinit", "--src", str(src), "--output", str(out), "--dataset", "coco"]) == 0
    got = _load(out)
    assert set(got) == {"backbone.stem.conv1.weight", *PREDICTOR_KEYS}  # optimizer state and metadata dropped
    assert got[CLS_WEIGHT].shape == (81, DIM) and got[CLS_BIAS].shape == (81,)
    assert got[BOX_WEIGHT].shape == (320, DIM) and got[BOX_BIAS].shape == (320,)
    # truck (COCO id 8) is base index 0 (ids 1-7 are novel) and all-class index 7 (8th smallest id).
    np.testing.assert_array_equal(got[CLS_WEIGHT][7], np.full(DIM, 1.0))
    assert got[CLS_BIAS][7] == 0.5
    np.testing.assert_array_equal(got[BOX_WEIGHT][28:32], np.repeat(np.arange(4.0)[:, None] + 1000, DIM, 1))
    np.testing.assert_array_equal(got[BOX_BIAS][28:32], np.arange(4.0) + 2000)
    # toothbrush (id 90) is the last base class (59) and the last of all (79).
    np.testing.assert_array_equal(got[CLS_WEIGHT][79], np.full(DIM, 60.0))
    np.testing.assert_array_equal(got[BOX_BIAS][316:320], np.arange(236.0, 240.0) + 2000)
    # traffic light (id 10): base index 1 (id 9 boat is novel), all index 9.
    np.testing.assert_array_equal(got[CLS_WEIGHT][9], np.full(DIM, 2.0))
    np.testing.assert_array_equal(got[BOX_WEIGHT][36:40, 0], np.arange(4.0, 8.0) + 1000)
    # background: source row 60 -> row 80.
    np.testing.assert_array_equal(got[CLS_WEIGHT][80], np.full(DIM, 61.0))
    assert got[CLS_BIAS][80] == 60.5
    # person (id 1, novel) -> index 0: random small weights, zero bias; its box rows 0-3 likewise.
    assert np.all(np.abs(got[CLS_WEIGHT][0]) < 0.1) and np.any(got[CLS_WEIGHT][0] != 0)
    assert got[CLS_BIAS][0] == 0 and np.all(got[BOX_BIAS][0:4] == 0)
    assert np.all(np.abs(got[BOX_WEIGHT][0:4]) < 0.1) and np.any(got[BOX_WEIGHT][0:4] != 0)
    # 60 base rows + background are copies, the 20 novel rows are random.
    copied = np.isin(got[CLS_WEIGHT][:, 0], np.arange(1.0, 62.0))
    assert copied.sum() == 61
    np.testing.assert_array_equal(got["backbone.stem.conv1.weight"], np.full((2, 3, 1, 1), 7.0))


def test_randinit_voc_split_keeps_base_first(tmp_path):
    src, out = tmp_path / "base.ckpt", tmp_path / "surgery.ckpt"
    _source(src, 15)
    got = model_surgery("randinit", src, out, "voc", split=1)
    assert got[CLS_WEIGHT].shape == (21, DIM) and got[BOX_WEIGHT].shape == (80, DIM)
    # Split 1: base classes (VOC order without bird, bus, cow, motorbike, sofa) keep indices 0-14.
    np.testing.assert_array_equal(got[CLS_WEIGHT][:15, 0], np.arange(1.0, 16.0))
    np.testing.assert_array_equal(got[BOX_BIAS][:60], np.arange(60.0) + 2000)
    np.testing.assert_array_equal(got[CLS_WEIGHT][20], np.full(DIM, 16.0))  # background
    assert np.all(got[CLS_BIAS][15:20] == 0) and np.all(np.abs(got[CLS_WEIGHT][15:20]) < 0.1)
    with pytest.raises(SurgeryError, match="split"):
        model_surgery("randinit", src, tmp_path / "x.ckpt", "voc")
    assert not (tmp_path / "x.ckpt").exists()


def test_remove_drops_exactly_the_predictor(tmp_path):
    src, out = tmp_path / "base.ckpt", tmp_path / "remove.ckpt"
    tensors = _source(src, 60)
    assert _tool().main(["--method", "remove", "--src", str(src), "--output", str(out), "--dataset", "coco"]) == 0
    got = _load(out)
    assert set(got) == {"backbone.stem.conv1.weight"}
    np.testing.assert_array_equal(got["backbone.stem.conv1.weight"], tensors["backbone.stem.conv1.weight"])


@pytest.mark.parametrize("method", ["remove", "randinit"])
def test_missing_predictor_key_writes_nothing(tmp_path, capsys, method):
    src, out = tmp_path / "base.ckpt", tmp_path / "out" / "new.ckpt"
    _source(src, 60, drop=(BOX_BIAS,))
    with pytest.raises(SurgeryError, match=r"roi_heads\.box_predictor\.bbox_pred\.bias"):
        model_surgery(method, src, out, "coco")
    assert _tool().main(["--method", method, "--src", str(src), "--output", str(out), "--dataset", "coco"]) == 1
    assert "bbox_pred.bias" in capsys.readouterr().err
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_wrong_class_count_is_refused(tmp_path):
    src, out = tmp_path / "base.ckpt", tmp_path / "new.ckpt"
    _source(src, 15)  # a VOC base model given as COCO
    with pytest.raises(SurgeryError, match=r"cls_score\.weight' has shape \(16, 6\), expected \(61, 6\)"):
        model_surgery("randinit", src, out, "coco")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.ckpt"]


def test_randinit_new_rows_have_reference_std():
    """New rows are normal(0, 0.01) for both layers, as DeFRCN's tools/model_surgery.py (not 0.001)."""
    from src.data.few_shot import COCO_ALL_CLASSES, COCO_BASE_CLASSES
    from src.models.defrcn.surgery import randinit_predictor

    dim = 2048
    weights = {CLS_WEIGHT: np.zeros((61, dim), np.float32), CLS_BIAS: np.zeros(61, np.float32),
               BOX_WEIGHT: np.zeros((240, dim), np.float32), BOX_BIAS: np.zeros(240, np.float32)}
    got = randinit_predictor(weights, COCO_BASE_CLASSES, COCO_ALL_CLASSES, seed=0)
    novel = [i for i, name in enumerate(COCO_ALL_CLASSES) if name not in COCO_BASE_CLASSES]
    box_rows = got[BOX_WEIGHT].reshape(80, 4, dim)[novel]
    cls_rows = got[CLS_WEIGHT][novel]
    # 20 x 4 x 2048 samples: the std estimate is within 0.2% of the truth; 0.001 would be far outside.
    assert box_rows.std() == pytest.approx(0.01, rel=0.02)
    assert cls_rows.std() == pytest.approx(0.01, rel=0.02)
    assert abs(box_rows.mean()) < 1e-3
