"""The training loop: accuracy on digits, exact resume, divergence, checkpoints, results."""

import json
import os
import stat

import pytest
import torch

from creditlab.errors import CreditlabError, TrainingError, UsageError
from creditlab.rules.bp import Backprop
from creditlab.training import checkpoint
from creditlab.training.trainer import TrainConfig, Trainer, train
from tests.conftest import straight_and_resumed


def quiet(config, out=None, data=None):
    return Trainer(config, out, progress=False, data=data)


def test_default_config_reaches_95_percent_on_digits(tmp_path, digits):
    results = quiet(TrainConfig(device="cpu"), tmp_path / "run", data=digits).fit()
    assert results["test_accuracy"] >= 0.95
    for key in (
        "rule",
        "dataset",
        "model",
        "seed",
        "epochs",
        "test_accuracy",
        "test_error",
        "val_accuracy",
        "seconds_per_epoch",
        "history",
    ):
        assert key in results
    assert len(results["seconds_per_epoch"]) == results["epochs"] == 20
    assert {"train_loss", "val_accuracy"} <= set(results["history"][0])
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["test_error"] == pytest.approx(1 - on_disk["test_accuracy"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["rule"] == "bp" and config["network"]["output"] == "out"


def test_test_accuracy_is_reported_for_the_best_validation_epoch(tmp_path, digits):
    trainer = quiet(TrainConfig(device="cpu", epochs=6, lr=0.3), tmp_path, data=digits)
    results = trainer.fit()
    best = max(results["history"], key=lambda h: h["val_accuracy"])
    assert results["best_epoch"] == best["epoch"]
    assert results["val_accuracy"] == best["val_accuracy"]
    saved = checkpoint.load(tmp_path / "best.pt")["params"]
    trainer.net.load_parameters(saved)
    accuracy = trainer.net.predict(trainer.data.test_x).argmax(1) == trainer.data.test_y
    assert results["test_accuracy"] == pytest.approx(accuracy.float().mean().item())


def _config(**changes):
    base = dict(
        device="cpu",
        epochs=4,
        dropout=0.2,
        lr=0.05,
        momentum=0.9,
        schedule="cosine",
        model="skip:32-32",
        batch_size=64,
    )
    base.update(changes)
    return TrainConfig(**base)


def test_resume_ends_with_exactly_the_weights_of_an_uninterrupted_run(
    tmp_path, digits, monkeypatch
):
    straight, expected, resumed, results = straight_and_resumed(
        _config, tmp_path, digits, monkeypatch
    )
    for name, p in straight.net.parameters().items():
        assert torch.equal(p, resumed.net.parameters()[name]), name
    for name, p in straight.best_params.items():
        assert torch.equal(p, resumed.best_params[name]), name
    assert results["test_accuracy"] == expected["test_accuracy"]
    assert [h["train_loss"] for h in results["history"]] == [
        h["train_loss"] for h in expected["history"]
    ]


def test_resume_with_another_config_is_refused_naming_the_fields(tmp_path, digits):
    quiet(_config(epochs=1), tmp_path, data=digits).fit()
    other = quiet(_config(epochs=1, lr=0.1, activation="tanh"), tmp_path, data=digits)
    with pytest.raises(UsageError, match=r"activation \(checkpoint 'relu', now 'tanh'\).*lr"):
        other.restore()


def test_more_epochs_may_be_resumed_without_a_cosine_schedule(tmp_path, digits):
    quiet(_config(epochs=1, schedule="constant"), tmp_path, data=digits).fit()
    more = quiet(_config(epochs=2, schedule="constant"), tmp_path, data=digits)
    assert more.restore()
    assert more.fit()["epochs"] == 2


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_checkpoint(
    tmp_path, digits, monkeypatch
):
    calls = {"n": 0}
    original = Backprop.updates
    steps_per_epoch = 20  # 1257 examples in batches of 64

    def poisoned(self, net, x, y):
        updates = original(self, net, x, y)
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 3:  # epoch 2, step 3
            self.last_loss = torch.tensor(float("nan"))
        return updates

    monkeypatch.setattr(Backprop, "updates", poisoned)
    trainer = quiet(_config(epochs=3), tmp_path, data=digits)
    good = None
    with pytest.raises(TrainingError, match=r"epoch 2, step 3.*last good checkpoint"):
        trainer.fit()
    good = checkpoint.load(tmp_path / "checkpoint.pt")
    assert good["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in good["params"].values())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "diverged" and "epoch 2, step 3" in results["message"]


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1, "w": torch.ones(3)})

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = checkpoint.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_open_would_give(tmp_path, umask):
    """Atomic writes go through mkstemp, whose files are owner-only; a run's files must be
    readable by whoever the user's umask lets read a file they write."""
    old = os.umask(umask)
    try:
        checkpoint.save(tmp_path / "checkpoint.pt", {"epoch": 1})
        checkpoint.write_json(tmp_path / "results.json", {"status": "finished"})
        (tmp_path / "plain.txt").write_text("by open()")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("checkpoint.pt", "results.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_never_execute_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Payload()}, path)
    with pytest.raises(CreditlabError, match="is not a creditlab checkpoint"):
        checkpoint.load(path)


def test_train_function_resumes_a_finished_run_without_retraining(tmp_path, digits):
    first = train(_config(epochs=1), tmp_path, progress=False)
    again = train(_config(epochs=1), tmp_path, resume=True, progress=False)
    assert again["history"] == first["history"]


def test_bad_config_values():
    for bad in (dict(epochs=0), dict(batch_size=-1), dict(lr=float("nan")), dict(dtype="int8")):
        with pytest.raises(UsageError):
            TrainConfig(**bad)


def test_alignment_probes_are_recorded_and_do_not_change_the_run(tmp_path, digits):
    probed = quiet(_config(epochs=2, probe_every=7), data=digits)
    plain = quiet(_config(epochs=2, probe_every=0), data=digits)
    results, reference = probed.fit(), plain.fit()
    for name, p in plain.net.parameters().items():
        assert torch.equal(p, probed.net.parameters()[name]), name
    probes = results["history"][0]["alignment"]
    assert [p["step"] for p in probes] == [7, 14]
    assert "alignment" not in reference["history"][0]
    for record in probes:  # bp against itself: the same direction
        assert set(record["angle"]) == set(plain.net.parameters()) | {"all"}
        assert all(a < 1e-3 for a in record["angle"].values())
        assert record["cos"]["all"] == pytest.approx(1.0)
