"""The registry and recipe magics in a real IPython shell against the real server: thin wrappers over the
client, with usage errors for arguments that do not go together."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from remote_magic.display.lineage import LineageView
from tests.test_magic_train import ip, run  # noqa: F401 - the shell fixture and the cell runner

FLAGS = "--dataset breast_cancer_rules --label malignant --eval-fraction 0.3 --seed 8"
MODEL = "import xgboost as xgb\nmodel = xgb.XGBClassifier(n_estimators=3, max_depth=2)"


def test_register_continue_list_and_draw_from_cells(ip):  # noqa: F811
    run(ip, f"%%remote_train {FLAGS} --register magic_model --alias best -o r1\n{MODEL}")
    run(ip, f"%%remote_train {FLAGS} --register magic_model --base-model magic_model@best -o r2\n{MODEL}")
    assert ip.user_ns["r2"].rounds == {"base": 3, "new": 3, "total": 6}
    table = run(ip, "%remote_models magic_model")
    assert [row[:3] for row in table.rows] == [
        ["magic_model@1", "best", "fresh"],
        ["magic_model@2", "", "from magic_model@1"],
    ]
    lineage = run(ip, "%remote_lineage magic_model@latest")
    assert isinstance(lineage, LineageView) and [v.ref for v in lineage.versions] == [
        "magic_model@2",
        "magic_model@1",
    ]
    assert "<img alt='lineage graph'" in lineage._repr_html_()
    scored = run(ip, f"%%remote_evaluate {FLAGS} --model-ref magic_model@best\n# the registered version")
    assert scored.kind == "evaluate" and scored.rounds["base"] == 3
    lined = run(ip, f"%remote_evaluate {FLAGS} --model-ref magic_model@best")  # no cell to write
    assert lined.kind == "evaluate" and lined.metrics == scored.metrics
    jobs = run(ip, "%remote_jobs")
    assert any("from magic_model@1" in row[-1] and "magic_model@2" in row[-1] for row in jobs.rows)


def test_recipe_cells_save_list_pause_resume_and_delete(ip):  # noqa: F811
    saved = run(
        ip, f"%%remote_recipe save magic_recipe --every 1d --register magic_recipe_model {FLAGS}\n{MODEL}"
    )
    assert saved.rows == [["magic_recipe", "train", "breast_cancer_rules", "every 1d", "0", "active"]]
    assert run(ip, "%remote_recipe pause magic_recipe").rows[0][-1].startswith("paused")
    assert run(ip, "%remote_recipe resume magic_recipe").rows[0][-1] == "active"
    assert "magic_recipe" in [row[0] for row in run(ip, "%remote_recipe").rows]
    run(ip, "%remote_recipe delete magic_recipe")
    assert "magic_recipe" not in [row[0] for row in run(ip, "%remote_recipe list").rows]


@pytest.mark.parametrize(
    "cell",
    [
        f"%%remote_train {FLAGS} --alias best\n{MODEL}",
        f"%%remote_train {FLAGS} --register x --if-better auc:much\n{MODEL}",
        f"%%remote_train {FLAGS} --base-model magic_model@1 --dry-run\n{MODEL}",
        "%remote_lineage",
        "%remote_recipe run",
        f"%%remote_recipe list\n{MODEL}",
    ],
)
def test_arguments_that_do_not_go_together_are_usage_errors(ip, cell):  # noqa: F811
    with pytest.raises(UsageError):
        run(ip, cell)


@pytest.mark.parametrize(
    "cell, said",
    [
        (f"%%remote_train {FLAGS} --register 'bad name!'\n{MODEL}", "'bad name!' is not a valid model name"),
        (f"%%remote_train {FLAGS} --register ok --alias 9lives\n{MODEL}", "'9lives' is not a valid alias"),
        (
            f"%%remote_recipe save r --every 1d --register 'bad name!' {FLAGS}\n{MODEL}",
            "'bad name!' is not a valid model name",
        ),
    ],
)
def test_an_invalid_name_is_one_line_that_says_what_a_name_is(ip, cell, said):  # noqa: F811
    with pytest.raises(UsageError) as refused:
        run(ip, cell)
    rule = "a name is 1 to 64 of a-z, A-Z, 0-9 and _, not starting with a digit"
    assert str(refused.value) == f"--register/--alias/--if-better: {said}: {rule}"


def test_a_margin_that_is_not_a_number_is_one_line_that_says_the_form(ip):  # noqa: F811
    with pytest.raises(UsageError) as refused:
        run(ip, f"%%remote_train {FLAGS} --register x --if-better auc:much\n{MODEL}")
    assert str(refused.value) == (
        "--register/--alias/--if-better: 'much' is not a number: say METRIC or METRIC:MARGIN, e.g. auc:0.002"
    )
