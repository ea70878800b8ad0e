"""Checkpoint folders: atomic numbered writes, the manifest guard, pickle-free optimizer and RNG state."""

from __future__ import annotations

import json

import pytest
import torch

from promptrec import checkpoint
from promptrec.data import DataError


def _trained_pair(steps: int) -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(steps):
        layer(torch.ones(4, 3)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return layer, optimizer


def test_optimizer_state_survives_safetensors_and_json(tmp_path):
    layer, optimizer = _trained_pair(3)
    tensors, parts = checkpoint.optimizer_parts(optimizer)
    assert sorted(tensors) == [f"optimizer/{i}/{k}" for i in (0, 1) for k in ("exp_avg", "exp_avg_sq", "step")]
    written = checkpoint.write(tmp_path, {**tensors, **{f"w/{n}": p for n, p in layer.named_parameters()}},
                               {"optimizer": parts})
    assert written.name == "checkpoint-000000"
    read_tensors, state = checkpoint.latest(tmp_path)

    fresh = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            param.copy_(read_tensors[f"w/{name}"])
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1, weight_decay=0.01)
    checkpoint.load_optimizer(fresh_optimizer, read_tensors, state["optimizer"])
    for model, opt in ((layer, optimizer), (fresh, fresh_optimizer)):  # one more step on each: identical
        model(torch.ones(4, 3)).pow(2).sum().backward()
        opt.step()
    assert torch.equal(layer.weight, fresh.weight) and torch.equal(layer.bias, fresh.bias)
    assert fresh_optimizer.state[fresh.weight]["step"].item() == 4.0


def test_newest_complete_checkpoint_wins_and_older_ones_go(tmp_path):
    for value in (1.0, 2.0, 3.0):
        checkpoint.write(tmp_path, {"x": torch.tensor([value])}, {"value": value})
    (tmp_path / "checkpoint-000003.tmp").mkdir()  # a write killed before its rename
    tensors, state = checkpoint.latest(tmp_path)
    assert state == {"value": 3.0} and tensors["x"].tolist() == [3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002", "checkpoint-000003.tmp"]
    checkpoint.write(tmp_path, {"x": torch.tensor([4.0])}, {"value": 4.0})  # reuses the stage's number
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000003"]
    assert checkpoint.latest(tmp_path / "absent") is None


def test_rng_state_round_trip_repeats_the_draws():
    torch.manual_seed(5)
    saved = checkpoint.rng_tensors()
    first = torch.rand(4)
    checkpoint.restore_rng(saved)
    assert torch.equal(torch.rand(4), first)


def test_manifest_guards_the_run(tmp_path):
    folder = tmp_path / "out.partial"
    checkpoint.open_run(folder, {"lr": 0.1, "betas": (0.9, 0.99), "data": "abc"})
    checkpoint.open_run(folder, {"lr": 0.1, "betas": (0.9, 0.99), "data": "abc"})  # same run: continues
    assert json.loads((folder / "manifest.json").read_text())["lr"] == 0.1
    with pytest.raises(DataError, match=r"out.partial: an unfinished training run with other arguments "
                                        r"\(data: 'abc', now 'xyz'\); re-run with the same arguments"):
        checkpoint.open_run(folder, {"lr": 0.1, "betas": (0.9, 0.99), "data": "xyz"})
    (folder / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="unreadable manifest; delete"):
        checkpoint.open_run(folder, {})


def test_manifest_guard_names_the_kind_of_run(tmp_path):
    checkpoint.open_run(tmp_path / "gen.partial", {"seed": 0, "texts": "ab"}, kind="run")
    with pytest.raises(DataError, match=r"gen.partial: an unfinished run with other arguments \(seed: 0, now 1\); "
                                        r"re-run with the same arguments to continue it, or delete the folder"):
        checkpoint.open_run(tmp_path / "gen.partial", {"seed": 1, "texts": "ab"}, kind="run")


def test_unreadable_checkpoint_is_one_line(tmp_path):
    checkpoint.write(tmp_path, {"x": torch.zeros(2)}, {})
    (tmp_path / "checkpoint-000000" / "tensors.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"checkpoint-000000: unreadable checkpoint .*; delete"):
        checkpoint.latest(tmp_path)
    checkpoint.remove(tmp_path)
    assert not tmp_path.exists()
    checkpoint.remove(tmp_path)  # already gone: nothing to do


def test_options_added_since_a_run_was_saved_read_as_how_it_trained(tmp_path):
    folder = tmp_path / "old.partial"
    checkpoint.open_run(folder, {"lr": 0.1})  # saved before option "bucket" existed; it trained unbucketed
    checkpoint.open_run(folder, {"lr": 0.1, "bucket": False}, added={"bucket": False})  # continues
    with pytest.raises(DataError, match=r"old.partial: an unfinished training run with other arguments "
                                        r"\(bucket: False, now True\)"):
        checkpoint.open_run(folder, {"lr": 0.1, "bucket": True}, added={"bucket": False})
    with pytest.raises(DataError, match=r"\(bucket: None, now False\)"):  # without `added`: a missing key differs
        checkpoint.check_run(folder, {"lr": 0.1, "bucket": False}, "a finished training run", "")
