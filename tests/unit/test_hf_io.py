"""Streaming HF checkpoint I/O: sharded writes read back bit for bit; refusals; atomic outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_vlm.checkpoint.hf_io import (
    INDEX_NAME,
    ConversionError,
    HFReader,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    check_tensor_sets,
    tensor_shapes,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(64, 32, generator=g).to(torch.bfloat16),
        "b.weight": torch.randn(128, 32, generator=g).to(torch.bfloat16),
        "c.bias": torch.randn(7, generator=g),
        "d.weight": torch.randn(16, 16, generator=g).to(torch.float16),
    }


def test_sharded_writer_round_trip_is_bit_identical(tmp_path):
    tensors = _tensors()
    writer = ShardedSafetensorsWriter(tmp_path, max_shard_bytes=5000)
    for name, t in tensors.items():
        writer.add(name, t)
    mapping = writer.close()
    files = sorted({f for f in mapping.values()})
    assert len(files) >= 2 and all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["weight_map"] == mapping
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert not list(tmp_path.glob("*.partial"))
    reader = HFReader(tmp_path)
    assert reader.names() == sorted(tensors)
    for name, t in tensors.items():
        got = reader.get(name)
        assert got.dtype == t.dtype and torch.equal(got.view(torch.uint8), t.view(torch.uint8))
    assert tensor_shapes(tmp_path) == {n: tuple(t.shape) for n, t in tensors.items()}


def test_single_shard_is_named_model_safetensors(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path)
    writer.add("x", torch.ones(3))
    writer.close()
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / INDEX_NAME).exists()
    assert torch.equal(load_file(tmp_path / "model.safetensors")["x"], torch.ones(3))


def test_check_tensor_sets_names_what_is_wrong():
    expected = {"a": (2, 3), "b": (4,)}
    with pytest.raises(ConversionError, match=r"missing tensors: b"):
        check_tensor_sets(expected, {"a": (2, 3)}, "src")
    with pytest.raises(ConversionError, match=r"unexpected tensors: z"):
        check_tensor_sets(expected, {"a": (2, 3), "b": (4,), "z": (1,)}, "src")
    with pytest.raises(ConversionError, match=r"shape mismatch: a \(3, 2\) != expected \(2, 3\)"):
        check_tensor_sets(expected, {"a": (3, 2), "b": (4,)}, "src")
    check_tensor_sets(expected, dict(expected), "src")


def test_atomic_output_dir_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target) as scratch:
            (scratch / "config.json").write_text("{}")
            raise RuntimeError("killed half way")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(target) as scratch:
        (scratch / "config.json").write_text("{}")
    assert (target / "config.json").is_file() and len(list(tmp_path.iterdir())) == 1


def test_atomic_output_dir_refuses_non_empty_target(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match="already exists and is not empty"):
        with atomic_output_dir(tmp_path):
            pass
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "escaping-index"])
def test_damaged_weights_are_one_line_conversion_errors(tmp_path, damage):
    """hf-to-mcore reads shapes first: a truncated or garbled safetensors file, or an index naming a file
    outside the directory, is a ConversionError (the CLI's one line, exit 2), never a safetensors traceback."""
    writer = ShardedSafetensorsWriter(tmp_path, max_shard_bytes=4000)
    for i in range(3):
        writer.add(f"layer.{i}.weight", torch.randn(30, 20))
    writer.close()
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "garbage":
        shard.write_bytes(b"\xff" * 64)
    else:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        index["weight_map"]["layer.0.weight"] = "../" + shard.name
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError) as err:
        tensor_shapes(tmp_path)
        HFReader(tmp_path).get("layer.1.weight")
    message = str(err.value)
    assert "\n" not in message
    assert (shard.name in message) if damage != "escaping-index" else ("not a safe file name" in message)
