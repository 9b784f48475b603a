"""Every shipped study file plans: its runs' gin parses and describes (params, tokens,
compute, eval groups) without training, so a broken binding in studies/ fails here."""

from pathlib import Path

import gin
import pytest

from flan_jax.study import runner

STUDIES = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.gin"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_a_shipped_study_plans(path):
    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        study = runner.Study()
    finally:
        gin.clear_config()
    grid = runner.points(study)
    assert len({p.name for p in grid}) == len(grid) >= 2
    plans = [runner.describe(p) for p in grid]
    # one recipe per study: the runs differ only along the study's axes
    assert all(p["params"] > 0 and p["tokens"] > 0 and p["compute"] > 0 for p in plans)
    for plan in plans:
        groups = study.loss_groups or plan["eval_groups"]
        assert groups, "every run has loss groups"


def test_the_ablation_runs_share_steps_tokens_and_groups():
    gin.clear_config()
    try:
        gin.parse_config_file(str(STUDIES[0].parent / "ablations.gin"))
        study = runner.Study()
    finally:
        gin.clear_config()
    plans = [runner.describe(p) for p in runner.points(study)]
    assert len(plans) == 21
    assert len({(p["params"], p["steps"], p["tokens"]) for p in plans}) == 1
    assert len({tuple(sorted(p["eval_groups"].items())) for p in plans}) == 1
