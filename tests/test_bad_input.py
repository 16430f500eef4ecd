"""Bad input gets a clear error before any work, and nothing is written: run keys, data files,
checkpoints, saved results and training runs. Each case asserts the error, words of its message
(the key or file, and the fix) and that the results root stayed empty."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from omegaconf.errors import OmegaConfBaseException

from main import run
from training.dataset import write_lmdb

GMM = [
    "problem=gmm",
    "algorithm.method.diffusion_scheduler_config.num_steps=5",
    "num_samples=4",
    "problem.evaluator.num_reference=200",
    "problem.evaluator.num_projections=8",
    "problem.data.id_list=0-1",
]

RUN_KEYS = [
    ("batch_size=-3", "batch_size"),
    ("batch_size=0", "batch_size"),
    ("batch_size=1.5", "batch_size"),
    ("num_samples=2.5", "num_samples"),
    ("num_samples=0", "num_samples"),
    ("seed=1.5", "seed"),
    ("seed=abc", "seed"),
    ("problem.data.id_list=''", "selects no item"),
    ("problem.data.id_list='1,1'", "more than once"),
    ("problem.data.id_list=99", "outside"),
    ("problem.data.id_list=a-b", "not a list of item ids"),
    ("problem.data.id_list=1.5", "integers"),
    ("problem.data.sigma_noise=nan", "finite number"),
    ("problem.data.sigma_noise=-0.1", "finite number"),
    ("exp_name=''", "exp_name"),
    ("exp_name=../elsewhere", "exp_name"),
    ("exp_name=/abs/path", "exp_name"),
    ("shard=3/2", "k/n"),
    ("shard=0/2", "k/n"),
    ("compat=paper", "compat mode"),
    ("device=cuda:0", "CUDA"),
    ("inference=maybe", "true or false"),
    ("overwrite=1", "true or false"),
    ("objective=3", "metric name"),
]


def _nothing_written(root):
    assert not root.exists() or not any(root.rglob("*")), sorted(root.rglob("*"))


@pytest.mark.parametrize("override, words", RUN_KEYS, ids=[o for o, _ in RUN_KEYS])
def test_bad_run_keys_fail_before_work(config_factory, tmp_path, override, words):
    if override.startswith("device=cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    root = tmp_path / "exps"
    with pytest.raises((ValueError, OmegaConfBaseException), match=words):
        run(config_factory([*GMM, override], root))
    _nothing_written(root)


def _ns(root, data_root, *extra):
    return [
        "problem=navier-stokes-small", "algorithm=enkg", f"problem.data.root={data_root}",
        f"problem.exp_dir={root}", "problem.data.id_list=0-2", *extra,
    ]  # fmt: skip


def _bad_lmdb(path, kind):
    rng = np.random.default_rng(0)
    fields = [rng.normal(size=(1, 32, 32)).astype(np.float32) for _ in range(3)]
    if kind == "empty":
        write_lmdb(path, [])
    elif kind == "resolution":
        write_lmdb(path, [f[:, :16, :16] for f in fields])
    elif kind == "nan":
        fields[1][0, 3, 4] = np.nan
        write_lmdb(path, fields)
    elif kind == "truncated":
        write_lmdb(path, fields + [rng.normal(size=(1, 32, 32)) for _ in range(40)])
        data = path / "data.mdb"
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size // 2)
    elif kind != "missing":
        raise ValueError(kind)
    return path


DATA = [
    ("missing", "no LMDB dataset"),
    ("empty", "holds no items"),
    ("resolution", "resolution"),
    ("nan", "NaN or infinite"),
    ("truncated", "truncated"),
]


@pytest.mark.parametrize("kind, words", DATA, ids=[k for k, _ in DATA])
def test_bad_data_files_are_named_before_work(config_factory, tmp_path, kind, words):
    data = _bad_lmdb(tmp_path / f"data-{kind}", kind)
    root = tmp_path / "exps"
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        run(config_factory(_ns(root, data)))
    assert words in str(err.value) and str(data) in str(err.value)
    _nothing_written(root)


def _checkpoint(path, kind):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        torch.save({"ema": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    return path


CHECKPOINTS = [
    ("empty", "is empty"),
    ("random", "not a torch checkpoint"),
    ("truncated", "truncated or damaged"),
]


@pytest.mark.parametrize("kind, words", CHECKPOINTS, ids=[k for k, _ in CHECKPOINTS])
def test_bad_checkpoints_are_named_and_never_sent_to_allow_pickle(
    config_factory, tmp_path, kind, words
):
    ckpt = _checkpoint(tmp_path / f"{kind}.pt", kind)
    root = tmp_path / "exps"
    with pytest.raises(ValueError) as err:
        run(config_factory(_ns(root, "data/navier-stokes-small/test", f"problem.prior={ckpt}")))
    assert words in str(err.value) and str(ckpt) in str(err.value)
    assert "allow_pickle" not in str(err.value)
    _nothing_written(root)


def test_a_corrupt_result_is_named_and_recomputed_with_overwrite(config_factory, tmp_path):
    run(config_factory(GMM))
    exp = tmp_path / "dps" / "default"
    (exp / "result_1.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"unreadable \(corrupt or truncated\): result_\{1\}"):
        run(config_factory(GMM))
    run(config_factory([*GMM, "overwrite=true"]))
    assert torch.load(exp / "result_1.pt", weights_only=True)["recon"].shape[0] == 4


def test_nan_in_the_measurements_is_blamed_on_the_data(config_factory, tmp_path, monkeypatch):
    from inverse_problems.linear import SVDLinear

    real = SVDLinear.forward

    def broken(self, x, **physics):
        y = real(self, x, **physics)
        y[-1, 0] = float("nan")
        return y

    monkeypatch.setattr(SVDLinear, "forward", broken)
    with pytest.raises(ValueError, match=r"measurements of items \[1\].*the data"):
        run(config_factory([*GMM, "batch_size=2"]))
    assert not (tmp_path / "dps" / "default" / "result_0.pt").exists()


def _train_cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONFIGS

    with initialize_config_dir(config_dir=f"{CONFIGS}/pretrain", version_base="1.3"):
        return compose("toy-grf", overrides=[f"log.exp_dir={tmp_path}", *overrides])


@pytest.mark.parametrize(
    "override, words",
    [("train.num_steps=-5", "train.num_steps"), ("train.batch_size=0", "train.batch_size"),
     ("train.lr=0", "train.lr"), ("train.lr=nan", "train.lr"), ("log.save_every=0", "save_every")],
)  # fmt: skip
def test_bad_training_keys_fail_before_work(tmp_path, override, words):
    from train import train

    with pytest.raises(ValueError, match=words):
        train(_train_cfg(tmp_path, override))
    _nothing_written(tmp_path)


def test_training_resume_skips_a_damaged_checkpoint_and_refuses_changed_settings(tmp_path, capsys):
    """The newest checkpoint truncated: the resume says so and continues from the previous one;
    a resume with another learning rate or batch size is refused and config.yaml kept."""
    from train import train

    base = ("train.num_steps=4", "log.save_every=2")
    train(_train_cfg(tmp_path, *base))
    ckpts = tmp_path / "toy-grf" / "ckpts"
    newest = ckpts / "ckpt_4.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    summary = train(_train_cfg(tmp_path, "train.num_steps=6", "log.save_every=2"))
    out = capsys.readouterr().out
    assert "ckpt_4.pt" in out and "falling back" in out and "resumed from" in out
    assert summary["step"] == 6 and len(summary["losses"]) == 4  # steps 3-6 from ckpt_2
    saved = (tmp_path / "toy-grf" / "config.yaml").read_text()
    for change in ("train.lr=0.01", "train.batch_size=8"):
        with pytest.raises(ValueError, match="other settings"):
            train(_train_cfg(tmp_path, "train.num_steps=8", change))
        assert (tmp_path / "toy-grf" / "config.yaml").read_text() == saved


def test_prior_free_baselines_run_without_a_checkpoint(config_factory, tmp_path):
    """fista_tv on inv-scatter-small with problem.prior pointing nowhere: no checkpoint needed."""
    summary = run(
        config_factory(
            ["problem=inv-scatter-small", "algorithm=fista_tv", "problem.data.id_list=0",
             f"problem.prior={tmp_path}/missing.pt"]
        )
    )  # fmt: skip
    assert summary["psnr"] > 25
    with pytest.raises(FileNotFoundError, match="prior checkpoint not found"):
        run(config_factory(["problem=inv-scatter-small", "algorithm=dps", "problem.data.id_list=0",
                            f"problem.prior={tmp_path}/missing.pt"]))  # fmt: skip


def test_cache_pickles_load_only_with_this_users_signature(tmp_path, monkeypatch):
    """A pickle placed in the cache (it would run code) is never loaded: only files signed with
    the per-user key are; tampered files are refused too."""
    import pickle

    from utils.signed_pickle import dump_signed, load_signed

    monkeypatch.setenv("INVERSEBENCH_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "cache" / "solvers" / "a.pkl"
    dump_signed({"built": [1, 2, 3]}, good)
    assert load_signed(good) == {"built": [1, 2, 3]}
    assert (tmp_path / "cache" / "pickle.key").stat().st_mode & 0o777 == 0o600

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    planted = tmp_path / "cache" / "solvers" / "b.pkl"
    planted.write_bytes(pickle.dumps(Evil()))
    assert load_signed(planted) is None and not (tmp_path / "pwned").exists()
    data = bytearray(good.read_bytes())
    data[-3] ^= 1
    good.write_bytes(bytes(data))
    assert load_signed(good) is None
