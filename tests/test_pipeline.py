"""main.py end to end on the exact Gaussian-mixture problem at a small size."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hydra.errors import MissingConfigException

from algo.dps import DPS
from inverse_problems.linear import SVDLinear
from main import problems_offering, run
from models.analytic import AnalyticPrior
from training.exact import LinearGMMProblems
from utils.compute import CountingOperator, Counts
from utils.distributions import grid_gmm
from utils.results import collate
from utils.rng import BatchRNG

FAST = [
    "problem=gmm",
    "pretrain=gmm",
    "algorithm.method.diffusion_scheduler_config.num_steps=40",
    "num_samples=32",
    "problem.evaluator.num_reference=2000",
    "problem.evaluator.num_projections=64",
]


def _results(exp_dir, ids):
    return {i: torch.load(exp_dir / f"result_{i}.pt", weights_only=True) for i in ids}


def test_run_writes_the_record(config_factory, tmp_path):
    """Result files in the reference's format, metrics.csv with compute columns, summary.json."""
    cfg = config_factory([*FAST, "problem.data.id_list=0-2", "batch_size=2"])
    summary = run(cfg)
    exp = tmp_path / "dps" / "default"
    res = _results(exp, [0, 1, 2])[1]
    assert res["recon"].shape == (32, 8, 1, 1) and res["target"].shape == (1, 8, 1, 1)
    assert res["observation"].shape == (1, 4)
    assert set(res["physics"]) == {"U", "S", "Vt", "sigma_noise"}
    rows = list(csv.DictReader(open(exp / "metrics.csv")))
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    for col in ("sw", "mode_tv", "nfe", "op_forward", "op_gradient", "seconds", "peak_mb"):
        assert col in rows[0]
    # DPS: one network evaluation and one operator gradient per sample per step.
    assert float(rows[0]["nfe"]) == 40 * 32 and float(rows[0]["op_gradient"]) == 40 * 32
    saved = json.loads((exp / "summary.json").read_text())
    assert saved["num_items"] == 3 and saved["sw"] == pytest.approx(summary["sw"])
    assert (exp / "config.yaml").is_file() and (exp / "log.txt").is_file()


def test_batch_size_invariance(config_factory, tmp_path):
    """An item's observation and samples do not depend on which items share its batch."""
    out = {}
    for b in (1, 3):
        cfg = config_factory(
            [*FAST, "problem.data.id_list=0-2", f"batch_size={b}"], tmp_path / f"b{b}"
        )
        run(cfg)
        out[b] = _results(tmp_path / f"b{b}" / "dps" / "default", [0, 1, 2])
    for i in (0, 1, 2):
        torch.testing.assert_close(out[1][i]["observation"], out[3][i]["observation"])
        torch.testing.assert_close(out[1][i]["recon"], out[3][i]["recon"], rtol=1e-4, atol=1e-4)


def test_resume_and_evaluate_only(config_factory, tmp_path):
    """A rerun solves only missing items; the summary equals a fresh run's; inference=false
    re-evaluates saved results to the same summary."""
    part = config_factory([*FAST, "problem.data.id_list=0-1"], tmp_path / "resume")
    run(part)
    exp = tmp_path / "resume" / "dps" / "default"
    stamp = {i: (exp / f"result_{i}.pt").stat().st_mtime_ns for i in (0, 1)}
    full = config_factory([*FAST, "problem.data.id_list=0-3"], tmp_path / "resume")
    resumed = run(full)
    assert {i: (exp / f"result_{i}.pt").stat().st_mtime_ns for i in (0, 1)} == stamp
    fresh = run(config_factory([*FAST, "problem.data.id_list=0-3"], tmp_path / "fresh"))
    timing = ("seconds", "seconds_std", "peak_mb", "peak_mb_std")
    strip = lambda s: {k: v for k, v in s.items() if k not in timing}  # noqa: E731
    assert strip(resumed) == strip(fresh)
    evaluated = run(
        config_factory([*FAST, "problem.data.id_list=0-3", "inference=false"], tmp_path / "resume")
    )
    assert evaluated == resumed


def test_evaluate_only_needs_results(config_factory, tmp_path):
    cfg = config_factory([*FAST, "problem.data.id_list=0", "inference=false"])
    with pytest.raises(FileNotFoundError, match="inference=true"):
        run(cfg)


def test_changed_config_is_refused(config_factory, tmp_path):
    """Results of different settings never mix in one experiment folder."""
    run(config_factory([*FAST, "problem.data.id_list=0"]))
    other = config_factory([*FAST, "problem.data.id_list=0", "algorithm.method.guidance_scale=3"])
    with pytest.raises(ValueError, match="exp_name"):
        run(other)
    run(
        config_factory(
            [*FAST, "problem.data.id_list=0", "algorithm.method.guidance_scale=3", "overwrite=true"]
        )
    )
    # Scoring settings are not part of the results: saved results can be re-evaluated.
    rescore = [*FAST, "problem.data.id_list=0", "algorithm.method.guidance_scale=3"]
    rescored = run(
        config_factory([*rescore, "inference=false", "problem.evaluator.num_projections=16"])
    )
    assert "sw" in rescored


@pytest.mark.parametrize(
    "override, missing", [("algorithm=nope", "algorithm/nope"), ("problem=nope", "problem/nope")]
)
def test_unknown_group_choice(config_factory, override, missing):
    """Hydra names the unknown choice and lists the available ones."""
    with pytest.raises(MissingConfigException) as err:
        config_factory([override])
    assert missing in str(err.value) and "Available options" in str(err.value)


def test_missing_checkpoint_fails_before_work(config_factory, tmp_path):
    cfg = config_factory([*FAST, "problem.prior=/nonexistent/prior.pt"])
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/prior\.pt"):
        run(cfg)
    assert not list(tmp_path.rglob("result_*.pt"))
    assert not list(tmp_path.rglob("config.yaml")), "a failed set-up must not pin the config"


class _NoGradient:
    """An operator that offers no gradient (like the black-box Navier-Stokes solver)."""

    capabilities = frozenset()


def test_missing_capability_is_named():
    net = AnalyticPrior(grid_gmm(4))
    with pytest.raises(ValueError, match=r"DPS needs operator capabilities \['gradient'\]") as err:
        DPS(net, _NoGradient(), {"num_steps": 5}, guidance_scale=1.0)
    assert "Pick an algorithm" in str(err.value)


def test_missing_capability_names_the_problems_that_offer_it(config_factory, tmp_path):
    """Through main.py the message points at problems that do offer it (read from the configs),
    before anything is written."""
    cfg = config_factory(
        ["problem=navier-stokes-small", "algorithm=dps", "problem.model.differentiable=false"],
        tmp_path / "exps",
    )
    with pytest.raises(ValueError, match="Problems that offer them:") as err:
        run(cfg)
    assert "gmm" in str(err.value) and not (tmp_path / "exps").exists()


def test_unknown_keys_are_named_with_the_accepted_ones(config_factory, tmp_path):
    cfg = config_factory([*FAST, "+algorithm.method.guidance_scal=3"], tmp_path / "exps")
    with pytest.raises(ValueError, match=r"takes no argument 'guidance_scal'.*guidance_scale"):
        run(cfg)


def test_problems_offering_reads_the_configs():
    assert {"gmm", "grf"} <= set(problems_offering({"gradient", "linear"}))
    # Navier-Stokes offers a gradient only where its config opts in (differentiable: true).
    offering = problems_offering({"gradient"})
    assert "navier-stokes-grf" in offering and "navier-stokes" not in offering
    assert "navier-stokes-grf" not in problems_offering({"linear"})


def test_linear_algebra_calls_are_counted():
    counts = Counts()
    op = CountingOperator(SVDLinear(), counts)
    data = LinearGMMProblems(grid_gmm(8), dim_y=2, num_items=2)
    obs = SVDLinear()(collate([data[0], data[1]]), BatchRNG.for_items(0, [0, 1], 0))
    x = torch.randn(6, 8, 1, 1)
    op.V(op.Vt(x, **obs.physics), **obs.physics)
    op.pseudo_inverse(obs.y, **obs.physics)
    op.forward(x, **obs.physics)
    assert (counts.op_linear, counts.op_forward, counts.op_gradient) == (6 + 6 + 2, 6, 0)


def test_grf_problem_runs(config_factory, tmp_path):
    cfg = config_factory(
        [
            "problem=grf",
            "pretrain=grf",
            "algorithm=uncond",
            "num_samples=16",
            "algorithm.method.diffusion_scheduler_config.num_steps=30",
            "problem.data.id_list=0-1",
            "problem.evaluator.num_reference=200",
        ]
    )
    summary = run(cfg)
    assert {"mean_rel_err", "std_rel_err", "sw"} <= set(summary)
    # Prior samples ignore the data: their mean is far from the posterior mean.
    assert summary["mean_rel_err"] > 0.5


def test_wandb_offline(config_factory, tmp_path, monkeypatch):
    """wandb=true logs config, per-item metrics and the summary (offline: no account needed)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = run(config_factory([*FAST, "problem.data.id_list=0", "wandb=true"]))
    assert "sw" in summary
    logs = list(tmp_path.rglob("*.wandb"))
    assert logs, "no offline wandb run written"


def test_non_finite_samples_are_flagged(config_factory, tmp_path, monkeypatch):
    """An algorithm that diverges on one item: the item's row says which fraction of its samples
    is not finite, and the run warns, naming it."""
    from algo.unconditional import UnconditionalDiffusionSampler

    original = UnconditionalDiffusionSampler.inference
    calls = []

    def diverging(self, observation, num_samples=1, rng=None):
        x = original(self, observation, num_samples, rng)
        if not calls:  # the first batch is item 0 alone (batch_size=1)
            x[0] = torch.nan
        calls.append(1)
        return x

    monkeypatch.setattr(UnconditionalDiffusionSampler, "inference", diverging)
    cfg = config_factory([*FAST, "algorithm=uncond", "problem.data.id_list=0-1", "batch_size=1"])
    summary = run(cfg)
    exp = tmp_path / "uncond" / "default"
    rows = list(csv.DictReader(open(exp / "metrics.csv")))
    assert [float(r["nonfinite"]) for r in rows] == [1 / 32, 0.0]
    assert summary["nonfinite"] == pytest.approx(1 / 64)
    text = (exp / "log.txt").read_text()
    assert "item 0: 1 of 32 samples are not finite" in text and "items have non-finite" in text


@pytest.mark.parametrize(
    "problem, typo",
    [("multi-coil-mri-small", "acceleraton_ratio"), ("navier-stokes-small", "forward_tim")],
)
def test_operator_typos_are_refused(config_factory, tmp_path, problem, typo):
    """A misspelt operator key fails naming it (MultiCoilMRI(acceleraton_ratio=8) used to run at
    acceleration 4 without a word)."""
    cfg = config_factory([f"problem={problem}", f"+problem.model.{typo}=8"], tmp_path / "exps")
    with pytest.raises(ValueError, match=f"takes no argument '{typo}'"):
        run(cfg)
    assert not (tmp_path / "exps").exists()


def test_black_hole_typos_are_refused(config_factory, tmp_path):
    cfg = config_factory(
        ["problem=blackhole-small", "+problem.model.noise_typ=eht"], tmp_path / "x"
    )
    with pytest.raises(ValueError, match="takes no argument 'noise_typ'"):
        run(cfg)
