"""`creditlab tune`: every rule's search space, ASHA's decisions, a real local Ray sweep with its
report and its resumption, a worker killed mid-sweep, the fallback without Ray, bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from creditlab import cli
from creditlab.compare import runs as compare
from creditlab.errors import UsageError
from creditlab.rules import RULES, rule
from creditlab.rules.base import Rule
from creditlab.rules.machinery import space
from creditlab.training.trainer import TrainConfig
from creditlab.tune import search as tune
from creditlab.tune.asha import ASHA
from creditlab.tune.ray_backend import SequentialPool, open_pool

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray not installed: pip install '.[ray]'"
)

# A tiny tune: 500 digits in batches of 25, a 16-unit network, no alignment probes.
TINY = dict(
    dataset="digits", train_subset=500, batch_size=25, model="mlp:16", optimizer="adam",
    probe_every=0, epochs=3,
)  # fmt: skip
TINY_ARGS = ["--dataset", "digits", "--train-subset", "1000", "--batch-size", "10", "--model",
             "mlp:16", "--probe-every", "0", "--epochs", "3", "--quiet"]  # fmt: skip


# ---- search spaces -------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_every_rule_declares_a_space_whose_draws_it_accepts(optimizer):
    for name, cls in RULES.items():
        resolved = space.resolve(cls, optimizer)
        assert resolved, f"{name} declares no search space"
        for i in range(5):
            params = space.draw(resolved, f"0:{name}:{i}")
            assert params == space.draw(resolved, f"0:{name}:{i}")  # a function of the key
            for key, value in params.items():
                e = resolved[key]
                if isinstance(e, space.Range):
                    assert e.low <= value <= e.high, (name, key, value)
                else:
                    assert value in e.values
            config = tune.trial_config(TrainConfig(optimizer=optimizer), name, {}, params)
            rule(name, **config.rule_opts)  # every drawn option is one the rule takes
            if not cls.applies_own_step:
                assert config.lr == params["lr"]


def test_optimiser_entries_follow_the_optimiser_and_fixed_options_are_not_searched():
    fa = RULES["fa"]
    assert {"lr", "beta1", "beta2", "weight_decay", "scale"} <= set(space.resolve(fa, "adamw"))
    sgd = space.resolve(fa, "sgd")
    assert "momentum" in sgd and "beta1" not in sgd
    assert sgd["lr"] != space.resolve(fa, "adam")["lr"]  # Adam's and SGD's rates differ
    assert "scale" not in space.resolve(fa, "sgd", fixed=("scale",))
    config = tune.trial_config(TrainConfig(), "fa", {"scale": 2.0}, {"beta2": 0.99, "lr": 0.1})
    assert config.rule_opts == {"scale": 2.0} and config.betas == (0.9, 0.99)


def test_a_log_range_samples_evenly_in_the_log():
    rng = random.Random(0)
    draws = [space.Range(1e-5, 1e-1, "log").sample(rng) for _ in range(2000)]
    below = sum(d < 1e-3 for d in draws) / len(draws)
    assert 0.45 < below < 0.55  # half the draws in the lower two of four decades
    assert {space.Range(1, 4, "linear", True).sample(rng) for _ in range(200)} == {1, 2, 3, 4}


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": (0.1, 0.01, "log")},
        {"lr": (0.0, 1.0, "log")},
        {"lr": (1e-3, 1.0, "cubic")},
        {"lr": []},
        {"colour": [1, 2]},
        {"rmsprop:lr": (1e-3, 1.0, "log")},
    ],
)
def test_a_malformed_space_is_refused_naming_the_entry(bad):
    class Bad(Rule):
        name = "bad"
        search_space: ClassVar[dict] = bad

    with pytest.raises(UsageError, match=r"search space entry bad\."):
        space.resolve(Bad, "adam")


def test_rules_command_shows_each_space(capsys):
    assert cli.main(["rules"]) == 0
    out = capsys.readouterr().out
    assert "search space (creditlab tune)" in out
    assert "adam:lr: [1e-05, 0.01] log" in out and "distribution: one of 'uniform'" in out


# ---- ASHA ----------------------------------------------------------------------------------
def test_asha_milestones_and_decisions():
    asha = ASHA(max_epochs=20, grace=2, eta=3)
    assert asha.milestones == [2, 6, 18]
    assert [asha.next_stop(e) for e in (0, 2, 5, 6, 18)] == [2, 6, 6, 18, 20]
    assert asha.report(0, 2, 0.5)  # the first at a rung always goes on
    assert not asha.report(1, 2, 0.4)  # below the 2/3 quantile of [0.5]
    assert asha.report(2, 2, 0.9)
    assert asha.cutoff(2) == pytest.approx(0.5 + (0.9 - 0.5) * (2 * 2 / 3 - 1))
    assert asha.report(2, 2, 0.9)  # judged again after a resume: the same, not against itself
    assert ASHA(max_epochs=3, grace=3).milestones == []  # a single rung: nobody is stopped
    for bad in (dict(grace=0), dict(grace=4), dict(eta=1)):
        with pytest.raises(UsageError):
            ASHA(max_epochs=3, **bad)


# ---- a real local Ray ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tune of bp and fa, 4 trials each, on a local Ray of two workers; then the same again."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray not installed: pip install '.[ray]'")
    out = tmp_path_factory.mktemp("tune") / "out"
    base = TrainConfig(**TINY)
    pool = open_pool(workers=2)
    try:
        first = tune.tune(base, ["bp", "fa"], 4, out, pool, seeds=2, progress=False, log=print)
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
        second = tune.tune(base, ["bp", "fa"], 4, out, pool, seeds=2, progress=False, log=print)
    finally:
        pool.close()
    return out, first, second, stamps


def test_tune_on_ray_writes_the_reports(swept):
    out, first, _, _ = swept
    assert "local Ray with 2 worker(s)" in first["settings"]["where"]
    for name in ("results.json", "table.md", "index.html", "val_accuracy.png", "tune.json",
                 "tune.md", "tune.html", "search_curves.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "finished" and record["kind"] == compare.KIND
    assert sorted((r["rule"], r["seed"]) for r in record["runs"]) == [
        ("bp", 0), ("bp", 1), ("fa", 0), ("fa", 1)
    ]  # fmt: skip
    saved = json.loads((out / "tune.json").read_text())
    for run in record["runs"]:  # the retrained runs use each rule's best trial's settings
        best = saved["rules"][run["rule"]]["best"]
        assert run["config"]["lr"] == best["params"]["lr"]
        assert run["config"]["epochs"] == 3 and run["status"] == "finished"
    for name in ("bp", "fa"):  # the retrained test errors, beside the search, per seed
        errors = saved["rules"][name]["test_errors"]
        assert errors == {
            str(r["seed"]): r["test_error"] for r in record["runs"] if r["rule"] == name
        }
    fa_best = saved["rules"]["fa"]["best"]
    assert record["settings"]["rule_opts"]["fa"]["scale"] == fa_best["params"]["scale"]
    text = (out / "tune.md").read_text()
    assert "Best configuration per rule" in text and "| bp | bp-00" in text
    assert "search_curves.png" in text


def test_every_rule_got_the_same_trials_and_budget(swept):
    _, first, _, _ = swept
    s = first["settings"]
    assert s["trials"] == 4 and s["epochs"] == 3 and s["milestones"] == [1]
    for name in ("bp", "fa"):
        trials = first["rules"][name]["trials"]
        assert len(trials) == 4
        assert all(t["status"] in ("finished", "stopped", "stalled") for t in trials)
        assert all(1 <= t["epochs"] <= 3 and len(t["curve"]) == t["epochs"] for t in trials)
        assert all("1" in t["rungs"] for t in trials)  # every trial was judged at the rung
        assert first["rules"][name]["search_seconds"] > 0
        best = first["rules"][name]["best"]
        assert best["val_accuracy"] == max(t["best_val_accuracy"] for t in trials)
    # A trial stopped by ASHA did worse at the milestone than some trial that went on.
    for name in ("bp", "fa"):
        trials = first["rules"][name]["trials"]
        for stopped in (t for t in trials if t["status"] == "stopped"):
            assert stopped["epochs"] == 1
            assert any(t["rungs"]["1"] > stopped["rungs"]["1"] for t in trials)


def test_running_the_tune_again_trains_nothing(swept):
    out, first, second, stamps = swept
    assert first["settings"]["jobs_run"] > 0
    assert second["settings"]["jobs_run"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps
    assert second["rules"]["fa"]["best"] == first["rules"]["fa"]["best"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_tune_reports_open_in_a_real_browser(swept, tmp_path):
    """Headless chromium opens copies of index.html and tune.html alone in a folder: every
    image loads and decodes (the probe of tests/test_compare.py)."""
    from test_compare import PROBE_SCRIPT, Images

    for page, count in (("index.html", 1), ("tune.html", 1)):
        copy = tmp_path / page
        copy.write_text((swept[0] / page).read_text() + PROBE_SCRIPT)
        with tempfile.TemporaryDirectory() as profile:
            done = subprocess.run(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
                 copy.as_uri()],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        dom = Images()
        dom.feed(done.stdout)
        assert len(dom.images) >= count, page
        assert 'data-images="' + ",".join(["ok"] * len(dom.images)) + '"' in done.stdout


@needs_ray
def test_a_worker_killed_mid_sweep(tmp_path):
    """SIGKILL the worker training a trial once another trial has finished: Ray runs the job
    again, it goes on from the trial's checkpoint, the sweep finishes, and the trial finished
    before the kill is untouched."""
    out = tmp_path / "out"
    base = TrainConfig(**{**TINY, "epochs": 6, "train_subset": 600, "batch_size": 20})
    killed: dict = {}
    stop = threading.Event()

    def killer():
        while not stop.is_set() and not killed:
            finished = [p.parent for p in out.glob("trials/bp/*/results.json")]
            for worker in out.glob("trials/bp/*/worker.json"):
                trial = json.loads((worker.parent / "trial.json").read_text())
                if finished and trial["status"] == "running" and worker.parent not in finished:
                    before = (finished[0] / "results.json").read_bytes()
                    os.kill(json.loads(worker.read_text())["pid"], signal.SIGKILL)
                    killed.update(trial=worker.parent, finished=finished[0], before=before)
                    break
            time.sleep(0.05)

    pool = open_pool(workers=2)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        record = tune.tune(base, ["bp"], 4, out, pool, seeds=1, grace=6, progress=False)
    finally:
        stop.set()
        thread.join()
        pool.close()
    assert killed, "no worker was caught training a trial"
    trials = record["rules"]["bp"]["trials"]
    assert all(t["status"] in ("finished", "stalled") for t in trials)  # grace 6: none stopped
    assert all(t["epochs"] == 6 for t in trials)
    assert (killed["finished"] / "results.json").read_bytes() == killed["before"]
    assert json.loads((killed["trial"] / "results.json").read_text())["epochs"] == 6


@needs_ray
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc only")
def test_a_killed_tune_takes_its_local_ray_along(tmp_path):
    """SIGKILL `creditlab tune` while a trial trains on its local Ray: Ray's processes (its
    GCS server, raylet and the workers) stop too (tune/watchdog.py), instead of holding the
    cores; the folder's lock goes with the process."""
    from creditlab.tune import watchdog

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    args = [*TINY_ARGS, "--epochs", "200", "--rules", "bp", "--trials", "4", "--workers", "2"]
    tune_process = subprocess.Popen(
        [sys.executable, "-m", "creditlab", "tune", *args, "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):  # at most two minutes for Ray to start and a trial to train
            if list(out.glob("trials/bp/*/worker.json")) or tune_process.poll() is not None:
                break
            time.sleep(0.1)
        assert tune_process.poll() is None, "tune ended before a trial was caught training"
        ray_processes = watchdog.descendants(tune_process.pid)
        names = {Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in ray_processes}
        assert any(b"raylet" in n for n in names), names  # a local Ray, started by tune
    finally:
        tune_process.kill()
        tune_process.wait()
    for _ in range(600):  # at most a minute; the watchdog looks once a second
        if not any(watchdog._alive(p, s) for p, s in ray_processes.items()):
            break
        time.sleep(0.1)
    left = [pid for pid, start in ray_processes.items() if watchdog._alive(pid, start)]
    assert not left, f"Ray's processes outlived the killed tune: {left}"
    # the lock went with the process (no Ray process holds it either)
    from creditlab.training.locks import _Lock

    lock = _Lock(out)
    assert lock.acquire("the test"), "the killed tune's folder is still locked"
    lock.release()


@needs_ray
def test_compare_runs_through_the_same_pool(tmp_path):
    config = TrainConfig(**TINY)
    pool = open_pool(workers=2)
    try:
        record = compare.compare(config, ["bp", "fa"], 1, {}, tmp_path, progress=False, pool=pool)
    finally:
        pool.close()
    assert [(r["rule"], r["status"]) for r in record["runs"]] == [
        ("bp", "finished"), ("fa", "finished")
    ]  # fmt: skip
    assert (tmp_path / "index.html").exists()


# ---- without Ray ---------------------------------------------------------------------------
def test_without_ray_the_trials_run_one_after_another(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    pool = open_pool()
    assert isinstance(pool, SequentialPool) and "Ray is not installed" in pool.description
    out = tmp_path / "out"
    args = ["tune", *TINY_ARGS, "--rules", "bp,fa", "--trials", "2", "--seeds", "1"]
    assert cli.main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Ray is not installed" in text and "one job after another" in text
    assert (out / "tune.html").exists() and (out / "index.html").exists()
    assert cli.main([*args, "--out", str(out), "--address", "auto"]) == 2
    assert "needs Ray" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trials", "0"], "--trials needs a positive number"),
        (["--eta", "1"], "reduction factor"),
        (["--grace-epochs", "4"], "--grace-epochs must be between 1 and --epochs"),
        (["--rules", "bp,nope"], "unknown rule"),
        (["--rule-opt", "fa.scale=2"], "not among the rules"),
        (["--workers", "0"], "--workers needs a positive number"),
    ],
)
def test_bad_input_is_refused_with_exit_code_2(extra, message, tmp_path, capsys):
    args = ["tune", *TINY_ARGS, "--rules", "bp", "--out", str(tmp_path / "o"), *extra]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "trials").exists()


def test_trial_folders_made_with_other_settings_are_kept_unless_forced(tmp_path):
    base = TrainConfig(**{**TINY, "epochs": 1})
    pool = SequentialPool("test")
    tune.tune(base, ["bp"], 1, tmp_path, pool, seeds=1, progress=False)
    other = TrainConfig(**{**TINY, "epochs": 1, "model": "mlp:8"})
    with pytest.raises(UsageError, match="made with other settings"):
        tune.tune(other, ["bp"], 1, tmp_path, pool, seeds=1, progress=False)
    folder = Path(tmp_path / "trials/bp/bp-000")
    assert json.loads((folder / "config.json").read_text())["model"] == "mlp:16"
    with pytest.raises(UsageError, match="tuned with --grace-epochs 1 --eta 3"):
        tune.tune(base, ["bp"], 1, tmp_path, pool, seeds=1, eta=2, progress=False)


@needs_ray
def test_compare_and_tune_go_to_an_existing_cluster(tmp_path, capsys):
    """`--address auto` finds a Ray head started apart (`ray start --head`, as on a cluster),
    and compare's jobs run there; tune's go there through the Ray Client (ray://). The head is
    this test's own process group, ended by its id afterwards."""
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
         "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        tiny = [*TINY_ARGS, "--rules", "bp", "--seeds", "1", "--address", "auto"]
        deadline = time.monotonic() + 120
        while True:  # the head takes a few seconds to come up
            code = cli.main(["compare", *tiny, "--out", str(tmp_path / "c")])
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        out = capsys.readouterr().out
        assert code == 0, out
        assert "sent to the Ray cluster at auto" in out
        client = [a if a != "auto" else "ray://127.0.0.1:10001" for a in tiny]  # Ray Client
        # The head starts a Ray Client server for each client; on a loaded machine its start
        # can time out ("Starting Ray client server failed", seen in 2 of 5 CI runs), which the
        # command reports with exit 2. A later try, in a folder of its own, connects.
        for attempt in range(4):
            out_dir = tmp_path / f"t{attempt}"
            code = cli.main(["tune", *client, "--trials", "1", "--out", str(out_dir)])
            if code != 2 or time.monotonic() > deadline + 120:
                break
            time.sleep(5)
        captured = capsys.readouterr()
        # 0, or 1 where the one toy trial stalled (the search learned nothing; results kept)
        assert code in (0, 1), captured.err
        assert "the Ray cluster at ray://127.0.0.1:10001" in captured.out
        assert (out_dir / "trials" / "bp" / "bp-000" / "results.json").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


@needs_ray
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tune_on_cuda_shares_a_gpu_between_trials(tmp_path):
    """Two trials at a time on one GPU (half a GPU each), through a local Ray."""
    base = TrainConfig(**{**TINY, "device": "cuda"})
    pool = open_pool(workers=2, gpus_per_job=0.5)
    try:
        tune.tune(base, ["bp", "fa"], 3, tmp_path, pool, seeds=1, progress=False)
        slots = pool.slots
    finally:
        pool.close()
    assert slots == 2
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert all(r["config"]["device_used"].startswith("cuda") for r in runs)
    assert all(r["status"] == "finished" for r in runs)


def test_trials_of_a_rule_that_share_a_network_are_grouped_for_stacking(tmp_path):
    trials = tune.make_trials(TrainConfig(**TINY), ["fa"], 3, {}, tmp_path)["fa"]
    assert [t.name for t in trials] == ["fa-000", "fa-001", "fa-002"]
    assert len({t.config.lr for t in trials}) == 3  # drawn apart, on one network
    groups = tune.trials_by_architecture(trials)
    assert list(groups.values()) == [trials]
    trials[1].config = dataclasses.replace(trials[1].config, model="mlp:8")
    assert sorted(len(g) for g in tune.trials_by_architecture(trials).values()) == [1, 2]
