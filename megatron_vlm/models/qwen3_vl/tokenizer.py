"""The Qwen3-VL tokenizer, built from the published pieces when no tokenizer.json is at hand.

    python tools/build_tokenizer.py --reference ../shared/reference --output runs/qwen3vl_tokenizer

Qwen3-VL's vocab.json and merges.txt are byte-identical to Qwen2.5-VL's; its tokenizer_config.json
adds four text tokens (151665..151668: ``<tool_response>``, ``</tool_response>``, ``<think>``,
``</think>``). ``build_tokenizer`` stages those three files, lets transformers build the fast
tokenizer from them (its own BPE conversion, the same as loading the published repo), and saves
tokenizer.json, tokenizer_config.json and the 8B chat template into one directory: what the
recipe's ``data.tokenizer`` and ``AutoTokenizer`` read. A downloaded Qwen3-VL checkpoint already
holds these files; this is for machines that have only the reference files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from megatron_vlm.utils import atomic

VOCAB_DIR = "qwen2_5_vl_tokenizer"
"""Under the reference directory: vocab.json and merges.txt (shared by both families)."""
CONFIG_DIR = "qwen3_vl"
"""Under the reference directory: Qwen3-VL's tokenizer_config.json and chat_template.json."""


def build_tokenizer(reference: str | Path, output: str | Path) -> Path:
    """Write the Qwen3-VL tokenizer built from ``reference`` into the new directory ``output``.

    Raises FileNotFoundError naming a missing reference file, FileExistsError when ``output``
    exists, ValueError when the built tokenizer does not give the config's added-token ids.
    """
    from transformers import AutoTokenizer

    reference = Path(reference)
    sources = {"vocab.json": reference / VOCAB_DIR, "merges.txt": reference / VOCAB_DIR,
               "tokenizer_config.json": reference / CONFIG_DIR}
    for name, folder in sources.items():
        if not (folder / name).is_file():
            raise FileNotFoundError(f"no {name} in {folder}")
    template = json.loads((reference / CONFIG_DIR / "chat_template.json").read_text())["chat_template"]
    added = json.loads((reference / CONFIG_DIR / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    with tempfile.TemporaryDirectory() as staging:
        for name, folder in sources.items():
            shutil.copyfile(folder / name, Path(staging) / name)
        tokenizer = AutoTokenizer.from_pretrained(staging)
    tokenizer.chat_template = template
    wrong = {int(i): t["content"] for i, t in added.items() if tokenizer.convert_tokens_to_ids(t["content"]) != int(i)}
    if wrong:
        raise ValueError(f"built tokenizer disagrees with tokenizer_config.json on the ids of {wrong}")
    with atomic.atomic_dir(output, inputs=[reference]) as scratch:
        tokenizer.save_pretrained(scratch)
    return Path(output)
