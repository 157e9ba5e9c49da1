"""A build's index.json (docs/formats.md section 3): the one reader, for the loader and `stats`.

    index = read_index(SHARD_DIR)    # dict, or ShardsError (one line naming the file)

The index is read as untrusted data: its shard names become paths, so each must be one plain file
name inside SHARD_DIR (utils/paths.safe_name), and sample counts must be counts.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_vlm.utils.paths import safe_name


class ShardsError(ValueError):
    """Shards that cannot be read or trained on as a whole (index, family); one line."""


def read_index(shard_dir) -> dict:
    """SHARD_DIR/index.json with its shard names and counts checked; FileNotFoundError when there is
    none (not a finished build), ShardsError when it is not a build index."""
    path = Path(shard_dir) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"no index.json in {shard_dir} (not a finished build)")
    try:
        index = json.loads(path.read_bytes())
        if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
            raise TypeError("no list of shards")
        for shard in index["shards"]:
            safe_name(shard["name"], "shard name")
            samples = shard["samples"]
            if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
                raise ValueError(f"shard {shard['name']} has samples={samples!r}")
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = str(err) if type(err) is ValueError else f"{type(err).__name__}: {err}"
        raise ShardsError(f"{path}: not a build index ({why})") from None
    return index
