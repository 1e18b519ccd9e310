"""SKAB's scorer: the pooled F1/FAR/MAR, and the published table of four reference detectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluation.skab_score import (
    TRAIN_ROWS,
    PooledScore,
    SkabError,
    confusion,
    data_files,
    pooled_score,
    read_predictions,
    read_skab_file,
    score_predictions_dir,
    write_predictions,
)


def _shared_skab() -> Path | None:
    """``shared/data/skab`` next to the repository or next to one of its parent folders (a
    worktree sits deeper than the main checkout)."""
    for folder in Path(__file__).resolve().parents[2].parents:
        candidate = folder / "shared" / "data" / "skab"
        if candidate.is_dir():
            return candidate
    return None


SKAB_DIR = _shared_skab()
requires_skab = pytest.mark.skipif(
    SKAB_DIR is None, reason="SKAB development subset (shared/data/skab) not found"
)

# The table of shared/data/skab/README.md: (F1, FAR %, MAR %) to the printed digits.
PUBLISHED = {
    "Conv_AE": (0.810, 12.40, 24.19),
    "MSET": (0.808, 35.87, 10.04),
    "LSTM_AE": (0.785, 34.14, 15.35),
    "T2-q": (0.777, 22.45, 23.55),
}


def test_counts_and_rates() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    said = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    score = confusion(labels, said)
    assert (score.tp, score.fp, score.fn, score.tn) == (2, 1, 1, 4)
    assert score.f1 == pytest.approx(2 / 3)
    assert score.far == pytest.approx(20.0)
    assert score.mar == pytest.approx(100 / 3)


def test_pooling_sums_counts_not_rates() -> None:
    # Two files, F1 1.0 and 0.0 alone: pooled, the counts add up (not an average of 1 and 0).
    score = pooled_score(
        [(np.array([1, 1, 1, 0]), np.array([1, 1, 1, 0])), (np.array([1, 0]), np.array([0, 1]))]
    )
    assert score == PooledScore(tp=3, fp=1, fn=1, tn=1)
    assert score.f1 == pytest.approx(3 / 4)


def test_empty_counts_do_not_divide_by_zero() -> None:
    assert PooledScore(0, 0, 0, 0).as_dict()["f1"] == 0.0


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(SkabError, match="3 predictions for 2"):
        confusion(np.array([0, 1]), np.array([0, 1, 1]))


@requires_skab
@pytest.mark.parametrize("detector", sorted(PUBLISHED))
def test_reproduces_the_published_table(detector: str) -> None:
    assert SKAB_DIR is not None
    files = [read_skab_file(key, path) for key, path in data_files(SKAB_DIR).items()]
    assert len(files) == 11
    score, per_file = score_predictions_dir(SKAB_DIR / "reference" / detector, files)
    assert len(per_file) == 11
    f1, far, mar = PUBLISHED[detector]
    assert (round(score.f1, 3), round(score.far, 2), round(score.mar, 2)) == (f1, far, mar)


@requires_skab
def test_written_predictions_read_back_and_score(tmp_path: Path) -> None:
    assert SKAB_DIR is not None
    key, path = next(iter(data_files(SKAB_DIR).items()))
    data = read_skab_file(key, path)
    assert len(data.feature_names) == 8
    test = data.test_rows
    # Predicting the labels themselves is perfect.
    out = tmp_path / "pred"
    write_predictions(out / f"{key}.csv", data.timestamps[test], data.anomaly[test])
    stamps, said = read_predictions(out / f"{key}.csv")
    assert stamps == data.timestamps[TRAIN_ROWS:]
    score, _ = score_predictions_dir(out, [data])
    assert (score.fp, score.fn, score.f1) == (0, 0, 1.0)
    # A predictions file that does not cover the test rows is refused.
    write_predictions(out / f"{key}.csv", data.timestamps[test][1:], said[1:])
    with pytest.raises(SkabError, match="not the"):
        score_predictions_dir(out, [data])
