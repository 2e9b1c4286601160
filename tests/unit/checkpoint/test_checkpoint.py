"""Checkpoints: optimizer state round-trips into a fresh optimizer; atomic, verified writes."""

import json

import numpy as np
import pytest
import torch

from align.store.checkpoint import (
    CheckpointError,
    flatten_state,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
    verify,
)


def _stepped(model, opt, n):
    for _ in range(n):
        model(torch.ones(2, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()


def test_optimizer_state_restores_into_a_never_stepped_optimizer():
    """A fresh AdamW has no moments yet; the saved ones must be created, not dropped."""
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    opt_a = torch.optim.AdamW(a.parameters(), lr=0.1)
    _stepped(a, opt_a, 2)
    saved_w = {k: v.clone() for k, v in a.state_dict().items()}
    saved_opt = flatten_state(opt_a.state_dict())
    assert "state.#0.exp_avg" in saved_opt
    _stepped(a, opt_a, 2)

    b = torch.nn.Linear(3, 2)
    b.load_state_dict(saved_w)
    opt_b = torch.optim.AdamW(b.parameters(), lr=0.1)
    assert opt_b.state_dict()["state"] == {}
    opt_b.load_state_dict(unflatten_state(opt_b.state_dict(), saved_opt))
    _stepped(b, opt_b, 2)
    for k in saved_w:
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])


def test_unflatten_rejects_wrong_shapes_and_missing_tensors():
    template = {"w": [torch.zeros(3)], "lr": 0.1}
    with pytest.raises(CheckpointError, match=r"has shape \(2,\), expected \(3,\)"):
        unflatten_state(template, {"w[0]": np.zeros(2, dtype=np.float32)})
    with pytest.raises(CheckpointError, match="lacks"):
        unflatten_state(template, {})


def _save(root, step):
    return save_checkpoint(
        root,
        step,
        {"lora_A.weight": np.ones((2, 2), np.float32)},
        {"r": 2},
        [{"x": np.arange(3, dtype=np.float32)}],
        {"data_position": step * 4},
        keep=2,
    )


def test_save_load_keep_and_ignore_partial(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / ".step_4.abc").mkdir()  # a save killed half-way: never listed
    (tmp_path / "step_5").mkdir()  # a folder without manifest: never listed
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_3"]
    ck = load_checkpoint(tmp_path / "step_3")
    assert ck["state"] == {"step": 3, "data_position": 12}
    np.testing.assert_array_equal(ck["optimizer_states"][0]["x"], [0, 1, 2])
    assert json.loads((tmp_path / "step_3" / "adapter" / "adapter_config.json").read_text()) == {"r": 2}


def test_corruption_is_named(tmp_path):
    ck = _save(tmp_path, 1)
    with open(ck / "optimizer_rank0.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(CheckpointError, match=r"optimizer_rank0.safetensors: checksum mismatch"):
        verify(ck)


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    _save(tmp_path, 1)
    ck = save_checkpoint(
        tmp_path, 1, {"w": np.ones(2, np.float32)}, {"r": 4}, [{"x": np.arange(5)}], {"data_position": 7}
    )
    verify(ck)
    assert load_checkpoint(ck)["state"]["data_position"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]  # no temporary or moved-aside folder left


def test_a_failed_write_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    import resource

    _save(tmp_path, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # every file over 64 bytes fails, as on a full disk
    try:
        with pytest.raises(CheckpointError) as err:
            save_checkpoint(tmp_path, 2, {"w": np.ones(1000, np.float32)}, {"r": 2}, [], {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(err.value)
    assert (
        "could not write checkpoint" in message
        and "File too large" in message
        and "adapter_model.safetensors" in message
    )
    assert "step_1 is intact" in message
    assert [p.name for p in tmp_path.iterdir()] == ["step_1"]
    verify(tmp_path / "step_1")
