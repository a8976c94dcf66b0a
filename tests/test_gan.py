"""The GAN loop, its run folder, judging, sampling, comparing and its command line.

Everything runs on scikit-learn's 8x8 digits with small networks, so the whole file takes
seconds; the judge (a classifier of digits) is trained once per session into a temporary cache.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from creditlab.data import load_dataset
from creditlab.engine.network import weight_name
from creditlab.errors import UsageError
from creditlab.gan import scoring
from creditlab.gan.fid import Gaussian, frechet_distance
from creditlab.gan.loop import (
    GanConfig,
    GanTrainer,
    build_discriminator,
    build_generator,
    train_gan,
)
from creditlab.gan.losses import GAN_LOSSES
from tests.conftest import SMALL_GAN_ARGS, Interrupt
from tests.test_gan_signals import reference_output


@pytest.fixture(scope="session")
def digits_data():
    return load_dataset("digits", progress=False)


@pytest.fixture(scope="session")
def judge_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def judge(digits_data, judge_cache):
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(judge_cache)
    try:
        return scoring.load_judge(digits_data, None, torch.device("cpu"), False, lambda _: None)
    finally:
        if old is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = old


def small(**changes) -> GanConfig:
    base = GanConfig(
        dataset="digits",
        generator="mlp:64-128",
        discriminator="mlp:128-64",
        latent=16,
        epochs=2,
        batch_size=32,
        lr=1e-3,
        eval_samples=400,
        device="cpu",
    )
    return dataclasses.replace(base, **changes)


def trainer(config, out, data, judge) -> GanTrainer:
    return GanTrainer(config, out, progress=False, log=lambda _: None, data=data, judge=judge)


# ---- the Frechet distance ------------------------------------------------------------------
def test_frechet_distance_of_gaussians_in_closed_form():
    # diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (s1 - s2)^2 over the standard deviations
    a = Gaussian(
        torch.tensor([0.0, 1.0], dtype=torch.float64),
        torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64)),
    )
    b = Gaussian(
        torch.tensor([3.0, 1.0], dtype=torch.float64),
        torch.diag(torch.tensor([1.0, 9.0], dtype=torch.float64)),
    )
    assert frechet_distance(a, b) == pytest.approx(9 + 1 + 4)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(
        6, 6, generator=g, dtype=torch.float64
    )
    f2 = torch.randn(400, 6, generator=g, dtype=torch.float64) * 2 + 1
    a, b = Gaussian.fit(f1), Gaussian.fit(f2)
    c1, c2 = a.cov.numpy(), b.cov.numpy()
    root = scipy_linalg.sqrtm(c1 @ c2).real
    expected = float(((a.mean - b.mean) ** 2).sum()) + np.trace(c1 + c2 - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    np.testing.assert_allclose(a.cov.numpy(), np.cov(f1.numpy(), rowvar=False))


# ---- the judge -----------------------------------------------------------------------------
def test_judge_is_accurate_cached_and_verified(digits_data, judge, judge_cache, monkeypatch):
    assert judge.test_accuracy > 0.9
    assert judge.path is not None and judge.path.exists()
    assert judge.path.parent == judge_cache / "creditlab" / "judges"
    monkeypatch.setenv("XDG_CACHE_HOME", str(judge_cache))
    messages = []
    again = scoring.load_judge(digits_data, None, torch.device("cpu"), False, messages.append)
    assert again.sha256 == judge.sha256 and not messages  # loaded, not trained
    for name, p in again.net.parameters().items():
        assert torch.equal(p, judge.net.parameters()[name])


def test_a_corrupt_judge_is_trained_again(digits_data, judge, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = tmp_path / "creditlab" / "judges" / judge.path.name
    target.parent.mkdir(parents=True)
    target.write_bytes(judge.path.read_bytes()[:-10] + b"0123456789")  # a damaged copy
    target.with_name(target.name + ".sha256").write_text(judge.sha256 + "\n")
    messages = []
    fresh = scoring.load_judge(digits_data, None, torch.device("cpu"), False, messages.append)
    assert any("fails its checksum" in m for m in messages)
    assert fresh.sha256 == judge.sha256  # trained again, deterministically, and saved over it
    assert target.read_bytes() == judge.path.read_bytes()


def test_judges_go_to_the_cache_and_beside_the_data_only_when_it_cannot_be_written(
    digits_data, tmp_path, monkeypatch
):
    data, data_folder = digits_data.subset(n_train=300), tmp_path / "data"
    data_folder.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    judge = scoring.load_judge(data, data_folder, torch.device("cpu"), False, print)
    assert judge.path.parent == tmp_path / "cache" / "creditlab" / "judges"
    assert not (data_folder / "judges").exists()  # a shared data folder is left alone

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache cannot be created below a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    beside = scoring.load_judge(data, data_folder, torch.device("cpu"), False, print)
    assert beside.path.parent == data_folder / "judges"
    assert beside.sha256 == judge.sha256  # the same training, the same bytes
    again = scoring.load_judge(data, data_folder, torch.device("cpu"), False, print)
    assert again.path == beside.path  # found beside the data

    messages = []
    nowhere = scoring.load_judge(data, None, torch.device("cpu"), False, messages.append)
    assert nowhere.path is None and any("this run only" in m for m in messages)


def test_references_bracket_real_and_noise(digits_data, judge):
    test = judge.gaussian(digits_data.test_x)
    refs = scoring.references(judge, digits_data, test)
    assert 0 < refs["fid_train_vs_test"] < refs["fid_uniform_noise"] / 10


# ---- the loop ------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", sorted(GAN_LOSSES))
def test_d_step_updates_are_the_gradient_of_the_discriminator_loss(loss, digits_data, judge):
    run = trainer(small(dtype="float64", loss=loss), None, digits_data, judge)
    real = run.real[:8]
    fake = run.generate(run.grid_latent[:8])
    captured = {}
    run.opt_d.update = lambda params, updates, state, lr: captured.update(updates)
    run.d_step(real, fake)
    params = {k: v.clone().requires_grad_(True) for k, v in run.D.parameters().items()}
    terms = GAN_LOSSES[loss]
    energy = (
        terms.d_real(reference_output(run.D, real, params))[0].mean()
        + terms.d_fake(reference_output(run.D, fake, params))[0].mean()
    )
    grads = torch.autograd.grad(energy, list(params.values()))
    for name, grad in zip(params, grads, strict=True):
        torch.testing.assert_close(captured[name], grad, rtol=1e-10, atol=1e-12)


def test_k_discriminator_steps_per_generator_step(digits_data, judge, monkeypatch):
    run = trainer(small(k=3, epochs=1), None, digits_data, judge)
    calls = {"d": 0, "g": 0}
    d_step, g_step = run.d_step, run.g_step

    def count(kind, step):
        def wrapped(*a):
            calls[kind] += 1
            return step(*a)

        return wrapped

    monkeypatch.setattr(run, "d_step", count("d", d_step))
    monkeypatch.setattr(run, "g_step", count("g", g_step))
    run.train_epoch(1)
    assert calls["d"] == run.steps_per_epoch
    assert calls["g"] == -(-run.steps_per_epoch // 3)


def test_dense_gan_learns_digits(digits_data, judge, tmp_path):
    """bp/bp on digits: from worse than noise to well below it, every class present."""
    config = small(epochs=12, generator="mlp:128-256", discriminator="mlp:256-128", lr=2e-3)
    results = train_gan(
        config, tmp_path / "run", progress=False, log=lambda _: None, data=digits_data, judge=judge
    )
    fids = [h["fid"] for h in results["history"]]
    ceiling = results["references"]["fid_uniform_noise"]
    assert results["status"] == "finished"
    assert results["best_fid"] == min(fids) < ceiling / 3
    best = results["history"][results["best_epoch"] - 1]
    assert min(best["class_shares"]) > 0.02, best["class_shares"]


@pytest.mark.parametrize("pair", [("fa", "fa"), ("dfa", "usf"), ("brsf", "frsf"), ("dni", "dni")])
def test_other_rule_pairs_train_without_error(pair, digits_data, judge):
    config = small(rule_g=pair[0], rule_d=pair[1], epochs=1, loss="hinge")
    results = train_gan(
        config, None, progress=False, log=lambda _: None, data=digits_data, judge=judge
    )
    assert results["status"] == "finished"
    assert np.isfinite(results["history"][0]["fid"])


def test_run_folder_holds_everything(digits_data, judge, tmp_path):
    out = tmp_path / "run"
    train_gan(small(), out, progress=False, log=lambda _: None, data=digits_data, judge=judge)
    for name in (
        "config.json",
        "checkpoint.pt",
        "best.pt",
        "results.json",
        "samples.png",
        "epochs.png",
        "loss.png",
        "fid.png",
        "shares.png",
        "index.html",
        "epochs/epoch-001.png",
        "epochs/epoch-002.png",
    ):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["sha256"] == judge.sha256
    assert set(results["references"]) == {"fid_train_vs_test", "fid_uniform_noise"}
    record = results["history"][0]
    for key in ("d_loss", "g_loss", "fid", "confidence", "class_shares", "warnings", "seconds"):
        assert key in record
    assert sum(record["class_shares"]) == pytest.approx(1.0)
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 5
    assert 'src="http' not in page and "<script" not in page


def straight_and_resumed(config, digits_data, judge, tmp_path, monkeypatch):
    """A 3-epoch run straight through, and one that stops in epoch 3 and is resumed: their
    weights must be equal. Returns the straight run and the resumed run's results."""
    straight = trainer(config, tmp_path / "straight", digits_data, judge)
    straight.fit()
    original = GanTrainer.train_epoch

    def crash(self, epoch):
        if epoch == 3:
            raise Interrupt
        return original(self, epoch)

    monkeypatch.setattr(GanTrainer, "train_epoch", crash)
    with pytest.raises(Interrupt):
        trainer(config, tmp_path / "broken", digits_data, judge).fit()
    monkeypatch.setattr(GanTrainer, "train_epoch", original)
    resumed = trainer(config, tmp_path / "broken", digits_data, judge)
    assert resumed.restore() and resumed.epoch == 2
    results = resumed.fit()
    for a, b in ((straight.G, resumed.G), (straight.D, resumed.D)):
        for name, p in a.parameters().items():
            assert torch.equal(p, b.parameters()[name]), name
    return straight, results


def test_resume_ends_with_the_weights_of_a_straight_run(digits_data, judge, tmp_path, monkeypatch):
    config = small(epochs=3, rule_g="brsf", rule_d="fa")  # rule state and random draws
    straight, results = straight_and_resumed(config, digits_data, judge, tmp_path, monkeypatch)
    assert [h["fid"] for h in results["history"]] == [h["fid"] for h in straight.history]


def test_resume_refuses_another_configuration(digits_data, judge, tmp_path):
    train_gan(
        small(epochs=1), tmp_path, progress=False, log=lambda _: None, data=digits_data, judge=judge
    )
    other = trainer(small(epochs=1, loss="hinge"), tmp_path, digits_data, judge)
    with pytest.raises(Exception, match="differing fields: loss"):
        other.restore()


def test_divergence_is_reported_and_the_last_checkpoint_kept(
    digits_data, judge, tmp_path, monkeypatch
):
    run = trainer(small(epochs=3), tmp_path, digits_data, judge)
    original = GanTrainer.d_step

    def poisoned(self, real, fake):
        loss, a, b = original(self, real, fake)
        return (loss * float("nan") if self.epoch == 1 else loss), a, b

    monkeypatch.setattr(GanTrainer, "d_step", poisoned)
    results = run.fit()
    assert results["status"] == "diverged"
    assert "epoch 2" in results["message"] and "epoch 1) is kept" in results["message"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "diverged" and saved["warnings"][-1].startswith("diverged")
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_mode_collapse_and_a_winning_discriminator_are_reported(digits_data, judge):
    run = trainer(small(), None, digits_data, judge)
    shares = [0.6] + [0.4 / 9] * 9
    found = run.warnings({"class_shares": shares, "d_loss": 1e-4, "fid": 1.0})
    assert any("mode collapse: class 0 has 60.0%" in w for w in found)
    assert any("discriminator wins" in w for w in found)
    assert run.warnings({"class_shares": [0.1] * 10, "d_loss": 1.2, "fid": 1.0}) == []


# ---- the command line (in-process: creditlab.cli.main, as the console script calls it) -----
@dataclasses.dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, judge_cache, monkeypatch):
    from creditlab.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(judge_cache))

    def run(*args) -> Done:
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse's own errors
            code = stop.code
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)

    return run


SMALL_ARGS = list(SMALL_GAN_ARGS)


def ran(done) -> bool:
    """The command ran to its end: exit 0, or exit 1 because the judge found that the toy GAN
    (one epoch, tiny networks) learned no digits, its results kept (docs/reliability.md)."""
    return done.returncode == 0 or (done.returncode == 1 and "learned nothing" in done.stderr)


def test_gan_and_sample_commands(tmp_path, cli):
    run = tmp_path / "run"
    done = cli("gan", *SMALL_ARGS, "--rule-g", "fa", "--rule-d", "bp", "--out", str(run))
    assert ran(done), done.stderr
    assert "classifier FID" in done.stdout
    again = cli("gan", *SMALL_ARGS, "--out", str(run))
    assert again.returncode == 2 and "--resume" in again.stderr
    longer = list(SMALL_ARGS)
    longer[longer.index("--epochs") + 1] = "2"
    more = cli("gan", *longer, "--rule-g", "fa", "--out", str(run), "--resume")
    assert ran(more), more.stderr
    assert json.loads((run / "results.json").read_text())["epochs"] == 2
    npz = tmp_path / "samples.npz"
    done = cli("sample", "--run", str(run), "--n", "37", "--out", str(npz))
    assert done.returncode == 0, done.stderr
    images = np.load(npz)["images"]
    assert images.shape == (37, 8, 8) and images.dtype == np.uint8
    assert images.max() > images.min()
    refused = cli("sample", "--run", str(run), "--n", "5", "--out", str(npz))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert np.load(npz)["images"].shape == (37, 8, 8)  # the user's file is untouched


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule-g", "nope"], "unknown rule 'nope'; valid rules:"),
        (["--rule-d", "pc"], "rule 'pc' sends no error signal backwards"),
        (
            ["--loss", "wasserstein"],
            "unknown GAN loss 'wasserstein'; valid GAN losses: hinge, nonsaturating",
        ),
        (["--generator", "conv:64"], "unknown generator 'conv:64'"),
        (["--generator", "mlp:64-x"], "bad hidden sizes"),
        (["--k", "0"], "k must be a positive integer"),
        (["--train-subset", "-5"], "train_subset must be a positive integer"),
        (["--eval-samples", "1"], "eval_samples must be at least 2"),
        (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--rule-opt-g", "scale"], "--rule-opt-g needs KEY=VALUE"),
        (["--rule-opt-g", "nope=1"], "unknown option(s) nope for rule 'bp'"),
        (["--epochs", "two"], "invalid int value"),
    ],
)
def test_bad_gan_input_is_refused_with_exit_code_2(args, message, tmp_path, cli):
    done = cli("gan", *SMALL_ARGS, "--out", str(tmp_path / "r"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_sample_refuses_a_folder_without_a_run(tmp_path, cli):
    done = cli("sample", "--run", str(tmp_path), "--out", str(tmp_path / "x.npz"))
    assert done.returncode == 2 and "best.pt" in done.stderr
    done = cli("sample", "--run", str(tmp_path), "--n", "0", "--out", str(tmp_path / "x.npz"))
    assert done.returncode == 2 and "--n must be a positive integer" in done.stderr


def test_gan_compare_writes_a_report_and_resumes(tmp_path, cli):
    out = tmp_path / "cmp"
    args = ["gan-compare", *SMALL_ARGS, "--rules", "bp/bp,fa/fa", "--seeds", "2", "--out", str(out)]
    done = cli(*args)
    assert ran(done), done.stderr
    for name in ("results.json", "table.md", "fid.png", "samples.png", "index.html"):
        assert (out / name).exists(), name
    record = json.loads((out / "results.json").read_text())
    assert len(record["runs"]) == 4 and record["pairs"] == ["bp/bp", "fa/fa"]
    assert "| bp/bp | 2 |" in (out / "table.md").read_text()
    assert "data:image/png;base64," in (out / "index.html").read_text()
    stamp = (out / "runs" / "bp-bp-seed0" / "checkpoint.pt").stat().st_mtime_ns
    again = cli(*args)
    assert ran(again) and "kept" in again.stdout
    assert (out / "runs" / "bp-bp-seed0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    bad = cli("gan-compare", *SMALL_ARGS, "--rules", "bp", "--out", str(out))
    assert bad.returncode == 2 and "GENERATOR/DISCRIMINATOR" in bad.stderr


def test_same_seed_pairs_start_from_the_same_weights(digits_data, judge):
    a = trainer(small(rule_g="bp", rule_d="bp"), None, digits_data, judge)
    b = trainer(small(rule_g="fa", rule_d="dfa"), None, digits_data, judge)
    for net_a, net_b in ((a.G, b.G), (a.D, b.D)):
        for name, p in net_a.parameters().items():
            assert torch.equal(p, net_b.parameters()[name])
    assert weight_name("input", "h1") in a.G.parameters()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gan_trains_on_cuda(digits_data, judge, tmp_path):
    config = small(device="cuda", epochs=2)
    results = train_gan(config, tmp_path, progress=False, log=lambda _: None, data=digits_data)
    assert results["status"] == "finished"
    assert results["config"]["device_used"].startswith("cuda:")
    assert np.isfinite(results["best_fid"])


# ---- the convolutional GAN (DCGAN-style) ---------------------------------------------------
def test_dcgan_models_follow_the_image_size(digits_data, judge):
    run = trainer(small(generator="dcgan:8", discriminator="dcgan:4"), None, digits_data, judge)
    g_shapes = [run.G.groups[j].shape for j in run.G.order]
    d_shapes = [run.D.groups[j].shape for j in run.D.order]
    assert g_shapes == [(16,), (16, 2, 2), (8, 4, 4), (1, 8, 8)]
    assert [run.G.groups[j].kind for j in run.G.order[2:]] == ["conv_transpose"] * 2
    assert run.G.groups["out"].act.name == "tanh"
    assert d_shapes == [(1, 8, 8), (4, 4, 4), (8, 2, 2), (1,)]
    assert run.D.groups["down1"].act.name == "leaky_relu:0.2"
    mnist = dataclasses.replace(small(generator="dcgan", discriminator="dcgan"), latent=100)
    G = build_generator(mnist, 784, torch.float32, "cpu", (28, 28))
    D = build_discriminator(mnist, 784, torch.float32, "cpu", (28, 28))
    assert [G.groups[j].shape for j in G.order] == [(100,), (128, 7, 7), (64, 14, 14), (1, 28, 28)]
    assert [D.groups[j].shape for j in D.order] == [(1, 28, 28), (64, 14, 14), (128, 7, 7), (1,)]


def test_dcgan_refuses_images_it_cannot_halve_twice():
    config = small(generator="dcgan:8", discriminator="dcgan:8")
    with pytest.raises(UsageError, match=r"model 'dcgan:8' needs images .* multiples of 4.*10x10"):
        build_generator(config, 100, torch.float32, "cpu", (10, 10))
    with pytest.raises(UsageError, match=r"multiples of 4.*6x8"):
        build_discriminator(config, 48, torch.float32, "cpu", (6, 8))


def test_conv_gan_resumes_exactly_and_learns(digits_data, judge, tmp_path, monkeypatch):
    config = small(generator="dcgan:8", discriminator="dcgan:8", epochs=3, lr=2e-3)
    straight, results = straight_and_resumed(config, digits_data, judge, tmp_path, monkeypatch)
    fids = [h["fid"] for h in results["history"]]
    assert fids == [h["fid"] for h in straight.history]
    assert fids[-1] < 0.8 * fids[0]  # it learns: the classifier FID falls (66 -> 34 when written)
    saved = json.loads((tmp_path / "broken" / "config.json").read_text())
    assert [g.get("kind") for g in saved["generator_network"]["groups"]][-1] == "conv_transpose"


def test_conv_gan_and_sample_commands(tmp_path, cli):
    run = tmp_path / "run"
    args = [*SMALL_ARGS, "--generator", "dcgan:4", "--discriminator", "dcgan:4"]
    done = cli("gan", *args, "--rule-g", "fa", "--rule-d", "usf", "--out", str(run))
    assert ran(done), done.stderr
    npz = tmp_path / "samples.npz"
    done = cli("sample", "--run", str(run), "--n", "21", "--out", str(npz))
    assert done.returncode == 0, done.stderr
    images = np.load(npz)["images"]
    assert images.shape == (21, 8, 8) and images.dtype == np.uint8
    out = tmp_path / "cmp"
    done = cli("gan-compare", *args, "--rules", "bp/bp,dfa/dfa", "--seeds", "1", "--out", str(out))
    assert ran(done), done.stderr
    assert "| dfa/dfa | 1 |" in (out / "table.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generator", "dcgan:0"], "bad model 'dcgan:0': write dcgan or dcgan:W"),
        (["--discriminator", "dcgan:x"], "bad model 'dcgan:x'"),
        (["--generator", "dcganx"], "bad model 'dcganx'"),
        (["--discriminator", "dcgan:-4"], "bad model 'dcgan:-4'"),
    ],
)
def test_bad_dcgan_strings_are_refused_with_exit_code_2(args, message, tmp_path, cli):
    done = cli("gan", *SMALL_ARGS, "--out", str(tmp_path / "r"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "r").exists()


def same_latents_on(run):
    stream = torch.Generator().manual_seed(7)

    def draw(n: int) -> torch.Tensor:
        u = torch.randn(n, run.config.latent, generator=stream, dtype=run.dtype)
        return u.to(run.device)

    return draw


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_conv_gan_trains_on_cuda_as_on_the_cpu(digits_data, judge):
    # three steps of plain SGD: Adam's division by sqrt(v) would magnify round-off in tiny
    # gradients into different steps, and many steps of the game magnify any difference
    config = small(
        generator="dcgan:8",
        discriminator="dcgan:8",
        dtype="float64",
        optimizer="sgd",
        lr=0.01,
        train_subset=96,
    )
    runs = []
    for device in ("cpu", "cuda"):
        run = trainer(dataclasses.replace(config, device=device), None, digits_data, judge)
        # CPU and CUDA generators draw different streams from one seed: both runs take their
        # latent batches from the same CPU stream, so only the arithmetic differs
        run._draw_latent = same_latents_on(run)
        run.train_epoch(1)
        runs.append(run)
    assert runs[1].G.W[("up1", "out")].device.type == "cuda"
    for name, p in runs[0].G.parameters().items():
        torch.testing.assert_close(runs[1].G.parameters()[name].cpu(), p, rtol=1e-6, atol=1e-8)
