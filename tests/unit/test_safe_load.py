"""megatron_vlm.checkpoint.safe_load on a small torch DCP checkpoint written here (no process group).

Crafted files carry a pickle whose __reduce__ would create a marker file: each is refused with an
UnsafeCheckpointError naming the file and the global, and the marker never appears. Clean files
load; missing, truncated and escaping data files are one-line CheckpointErrors.
"""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from megatron_vlm.checkpoint import safe_load


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def ckpt(tmp_path):
    """A DCP checkpoint with one tensor and one byte item (what Megatron's ShardedObjects become)."""
    path = tmp_path / "ckpt"
    state = {"w": torch.arange(12.0).view(3, 4), "settings": "adam(0.9, 0.95)"}  # a str is a byte item
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path)), no_dist=True)
    return path


def _load(path) -> dict:
    state = {"w": torch.zeros(3, 4), "settings": ""}
    dcp.load(state, storage_reader=safe_load.SafeReader(str(path)), planner=safe_load.SafeLoadPlanner(), no_dist=True)
    return state


def test_clean_checkpoint_loads(ckpt):
    state = _load(ckpt)
    assert torch.equal(state["w"], torch.arange(12.0).view(3, 4))
    assert state["settings"] == "adam(0.9, 0.95)"


def test_crafted_metadata_is_refused(ckpt, tmp_path):
    marker = tmp_path / "ran"
    metadata = pickle.loads((ckpt / ".metadata").read_bytes())
    metadata.planner_data = [_Payload(marker)]
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(safe_load.UnsafeCheckpointError, match=r"\.metadata asks to import (io|builtins)\.open"):
        safe_load.read_metadata(ckpt)
    assert not marker.exists()
    pickle.loads((ckpt / ".metadata").read_bytes())  # what torch's own reader does: the code runs
    assert marker.exists()


def test_crafted_byte_item_is_refused(ckpt, tmp_path):
    marker = tmp_path / "ran"
    metadata = pickle.loads((ckpt / ".metadata").read_bytes())
    index = next(i for i in metadata.storage_data if i.fqn == "settings")
    buf = io.BytesIO()
    torch.save({"lr": _Payload(marker)}, buf)
    (ckpt / "evil.distcp").write_bytes(buf.getvalue())
    info = metadata.storage_data[index]
    metadata.storage_data[index] = type(info)(relative_path="evil.distcp", offset=0, length=len(buf.getvalue()))
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointException) as raised:  # torch DCP wraps each rank's error
        _load(ckpt)
    err = safe_load.as_checkpoint_error(raised.value, ckpt)
    assert isinstance(err, safe_load.UnsafeCheckpointError) and ".open" in str(err)
    assert "\n" not in str(err)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["missing", "truncated", "escaping"])
def test_damaged_storage_is_one_line(ckpt, damage):
    data_file = next(ckpt.glob("*.distcp"))
    if damage == "missing":
        data_file.unlink()
    elif damage == "truncated":
        data_file.write_bytes(data_file.read_bytes()[:20])
    else:
        metadata = pickle.loads((ckpt / ".metadata").read_bytes())
        for index, info in list(metadata.storage_data.items()):
            metadata.storage_data[index] = type(info)(relative_path="../../etc/passwd", offset=0, length=1)
        (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(safe_load.CheckpointError) as raised:
        safe_load.read_metadata(ckpt)
    message = str(raised.value)
    assert "\n" not in message
    assert {"missing": "missing", "truncated": "truncated", "escaping": "outside the checkpoint"}[damage] in message


def test_truncated_metadata_is_one_line(ckpt):
    (ckpt / ".metadata").write_bytes((ckpt / ".metadata").read_bytes()[:100])
    with pytest.raises(safe_load.CheckpointError, match="unreadable") as raised:
        safe_load.read_metadata(ckpt)
    assert "\n" not in str(raised.value)


def _te_state(recipe_obj) -> torch.Tensor:
    """Extra state the way Transformer Engine writes it: a pickled dict as a byte tensor."""
    state = {"recipe": recipe_obj, "scale_fwd": torch.ones(3), "amax_history_fwd": torch.zeros(4, 3),
             "extra_fp8_variables": {"num_gemms": 1}}
    return torch.frombuffer(bytearray(pickle.dumps(state)), dtype=torch.uint8)


def test_te_extra_state_with_tensors_passes_and_with_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    safe_load.check_te_extra_state({"decoder": {"layers.0.linear_fc1._extra_state": _te_state(None)}}, tmp_path)
    safe_load.check_te_extra_state({"x._extra_state": None, "y._extra_state": torch.empty(0, dtype=torch.uint8)}, tmp_path)
    crafted = {"decoder": {"layers.0.linear_fc1._extra_state": _te_state(_Payload(marker))}}
    with pytest.raises(safe_load.UnsafeCheckpointError, match="(io|builtins).open"):
        safe_load.check_te_extra_state(crafted, tmp_path)
    assert not marker.exists()
