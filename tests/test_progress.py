"""Progress reporting (src/progress.py) and the training speed that leaves out graph compilation."""

import logging
import time

import pytest

from src.engine.trainer import StepSpeed
from src.progress import track


def test_log_lines_give_count_rate_and_eta_when_not_on_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="detzoo")
    items = list(track(range(5), 10, "evaluating val2017", count=lambda _: 2, interval_s=0.0, use_bar=False))
    assert items == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "evaluating val2017: started, 10 img"
    assert lines[1].startswith("evaluating val2017: 2/10 img (20%), ")
    assert "img/s, ETA " in lines[1]
    assert lines[-1].startswith("evaluating val2017: 10/10 img (100%)") and lines[-1].endswith("(done)")
    assert len(lines) == 7  # start, one per item (interval 0), done


def test_log_lines_are_rate_limited(caplog):
    caplog.set_level(logging.INFO, logger="detzoo")
    list(track(range(100), 100, "infer", interval_s=3600.0, use_bar=False))
    assert [r.getMessage().split(":")[1].split()[0] for r in caplog.records] == ["started,", "100/100"]


def test_bar_on_a_terminal_shows_rate_and_eta(capsys):
    assert list(track(range(3), 3, "converting sample to MindRecord", use_bar=True)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "converting sample to MindRecord" in err and "3/3" in err and "img/s" in err


def test_an_error_in_the_loop_reaches_the_caller():
    def broken():
        yield 1
        raise ValueError("bad image x.jpg")

    with pytest.raises(ValueError, match="x.jpg"):
        list(track(broken(), 2, "infer", use_bar=False))


def test_step_speed_starts_after_the_compile_step():
    speed = StepSpeed(images_per_step=4)
    assert speed.images_per_second() == 0.0 and speed.eta(10) == "?"
    time.sleep(0.05)
    speed.tick()
    assert 0 < speed.images_per_second() <= 4 / 0.05
    hours, minutes, seconds = speed.eta(36000).split(":")
    assert int(hours) >= 0.05 * 36000 // 3600 and len(minutes) == len(seconds) == 2
