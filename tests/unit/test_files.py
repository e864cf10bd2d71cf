"""Atomic writes: whole files only, nothing left behind on failure, and the permissions a plain
open() gives (a model store must be readable by the serving container's user)."""

from __future__ import annotations

import os
import stat

import pytest

from models.files import atomic_write, atomic_write_with


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_replaces_the_file_with_open_permissions(tmp_path, umask_022):
    target = tmp_path / "sub" / "a.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write(target, b"old")

    def broken(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_stored_models_are_readable_by_other_users(tmp_path, umask_022):
    import torch

    from models import checkpoints
    from models.generation import Generator

    args = {"image_size": 32, "channels": 1, "nz": 8, "ngf": 4}
    config = checkpoints.ModelConfig(name="g", task="generation", architecture="dcgan", classes=(), model_args=args)
    folder = checkpoints.save_model(Generator(**args), config, tmp_path / "g")
    for name in (checkpoints.WEIGHTS_FILE, checkpoints.CONFIG_FILE):
        assert (folder / name).stat().st_mode & stat.S_IROTH
    assert isinstance(checkpoints.load_model(folder)[0], torch.nn.Module)
