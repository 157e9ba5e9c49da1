"""The packed THD loader: shards -> per-rank micro-batches (docs/formats.md section 4), resumable.

Split. Every epoch orders the shards by a seeded permutation; samples, numbered g = 0, 1, ...
in that order, belong to stream g mod S, where S = dp_size x num_workers and the stream of
(dp rank r, worker w) is r * num_workers + w. So ranks and workers never overlap and together
see every sample once per epoch. A stream reads tar headers of every shard but only its own
samples' bytes.

Memory. A stream holds the metadata of ``pack_buffer`` samples (json and image offsets, no
pixels); it picks a best fit (``packing.choose_best_fit``), then reads, decodes and tokenizes
only the chosen samples, straight into one pixel buffer. Memory is one packed micro-batch per
batch in flight: at 128K tokens of pages its float32 pixels are ~2.5 GB, and DataLoader workers
hand it over through shared memory, so /dev/shm must hold num_workers x prefetch_factor of them
(run containers with --ipc=host); ``pixel_dtype=torch.bfloat16`` halves it.

Length. ``variable_seq_length`` (the recipe default) ends each sequence at its samples' total
rounded up to ``seq_length_multiple`` instead of padding it to max_length (``packing.pack``);
the samples in each sequence, and so the state below, are the same either way.

State. Each micro-batch carries its stream's state after producing it: epoch, next sample g,
and the buffer as sample numbers (re-read on resume), plus skip counts. ``PackedLoader`` keeps
the state of the last batch it handed out per worker and which worker is next; restoring it
yields exactly the batches an uninterrupted run would have yielded next.

Bad data. One taxonomy: a bad sample is counted and bounded; a broken backend is fatal. A bad
sample (unreadable json, a member name that is not a plain file name, an image that fails to
decode or whose size or token count disagrees with the build, a sample longer than max_length)
is skipped and counted by reason (``PackedLoader.skipped``), and the first occurrences are
logged. A stream that meets ``max_bad_samples`` bad samples in a row, or a whole epoch of its
samples without a good one, stops with :class:`BadDataError` naming the counts, instead of
searching forever. A broken image backend (``ImageBackendError``: DALI not installed, no GPU, a
pipeline that fails on images PIL decodes) is fatal at once, with its reason; it is never counted.
Both reach the caller as one-line errors, from worker processes too.

Signals. DataLoader workers ignore SIGTERM and SIGUSR1: Slurm sends them to every process of a
step, and a worker killed by one would crash its rank mid-step instead of letting it save. The
rank handles them (training/loop.py) and shuts its workers down.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import signal
import tarfile
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_vlm.data import tokens
from megatron_vlm.data.image_processing import ImageBackendError, RowCountMismatch, process_images
from megatron_vlm.data.packing import Sample, choose_best_fit, pack, padded_length
from megatron_vlm.data.shard_index import ShardsError, read_index
from megatron_vlm.models.family import DEFAULT_FAMILY, get_family
from megatron_vlm.utils.paths import safe_name

log = logging.getLogger(__name__)
STATE_VERSION = 1
# Reasons that are one shard's, not one sample's: they do not count toward a stream's bad streak.
NOT_A_SAMPLE = {"unreadable-tar"}


class BadDataError(RuntimeError):
    """A loader stream met too many bad samples in a row; the message (one line) names the counts."""


def _plain_name(name: str) -> bool:
    try:
        safe_name(name)
        return True
    except ValueError:
        return False


@dataclass
class _Entry:
    """Where one sample lives: its json and image members (offset, size) in a shard tar."""

    shard: str
    json_loc: tuple[int, int] | None
    images: list[tuple[int, int]]
    bad_name: bool = False


def scan_shard(path: Path) -> tuple[list[_Entry], bool]:
    """Samples of a shard in order, from tar headers only; and whether the tar read to its end."""
    entries: list[_Entry] = []
    keys: list[str] = []
    ok = True
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if not keys or keys[-1] != key:
                    keys.append(key)
                    entries.append(_Entry(str(path), None, []))
                if not _plain_name(m.name):  # the build writes plain names; anything else is not ours
                    entries[-1].bad_name = True
                elif ext == "json":
                    entries[-1].json_loc = (m.offset_data, m.size)
                elif ext.startswith("i"):
                    entries[-1].images.append((m.offset_data, m.size))
    except (tarfile.TarError, OSError, EOFError):
        ok = False
    return entries, ok


def shards_family(index: dict) -> str:
    """The model family a build was made for (shards from before families were recorded are Qwen2.5-VL's)."""
    return index.get("family", DEFAULT_FAMILY)


class ShardStream:
    """The micro-batches of one (dp rank, worker) stream; ``state`` is where to resume."""

    def __init__(self, shard_dir, index: dict, stream: int, num_streams: int, max_length: int, tokenizer_dir: str,
                 pack_buffer: int = 32, pad_multiple: int = 1, image_backend: str = "pil", seed: int = 0,
                 epochs: int | None = None, state: dict | None = None, pixel_dtype: torch.dtype = torch.float32,
                 length_multiple: int | None = None, image_device: int | None = None, max_bad_samples: int = 1000):
        self.dir = Path(shard_dir)
        self.image_device = image_device  # the dali backend's GPU: the rank's own
        self.family = get_family(shards_family(index))
        self.rule = self.family.image.with_pixels(index["min_pixels"], index["max_pixels"])
        self.length_multiple = length_multiple  # None: every sequence is max_length long (packing.pack)
        self.shards = [s["name"] for s in index["shards"]]
        self.counts = [s["samples"] for s in index["shards"]]
        self.stream, self.num_streams = stream, num_streams
        self.max_length, self.pad_multiple, self.buffer_size = max_length, pad_multiple, pack_buffer
        self.tokenizer = tokens.load_tokenizer(tokenizer_dir)
        self.backend, self.seed, self.epochs, self.pixel_dtype = image_backend, seed, epochs, pixel_dtype
        st = state or {"epoch": 0, "next": stream, "buffer": [], "skipped": {}}
        self.epoch, self.next = st["epoch"], st["next"]
        self.skipped = Counter(st["skipped"])
        self._scan: tuple[int, str, list[_Entry]] | None = None
        if stream >= self._total():
            raise ValueError(f"{self._total()} samples cannot feed {num_streams} loader streams (dp ranks x workers)")
        # Bad samples in a row before the stream gives up: the bound, or one epoch of this stream's samples.
        per_epoch = -(-(self._total() - stream) // num_streams)
        self.max_bad_streak, self.bad_streak = min(max_bad_samples, per_epoch), 0
        self.buffer = []
        for ep, g in st["buffer"]:
            meta = self._read_meta(ep, g)
            if meta is not None:
                self.buffer.append(meta)

    def state(self) -> dict:
        return {"epoch": self.epoch, "next": self.next, "buffer": [[m["epoch"], m["g"]] for m in self.buffer],
                "skipped": dict(self.skipped)}

    def _order(self, epoch: int) -> list[int]:
        """The epoch's shard order (a seeded permutation), cached for the current epoch."""
        if getattr(self, "_order_cache", (None,))[0] != epoch:
            order = list(range(len(self.shards)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def _locate(self, epoch: int, g: int) -> tuple[str, int] | None:
        for s in self._order(epoch):
            if g < self.counts[s]:
                return self.shards[s], g
            g -= self.counts[s]
        return None

    def _skip(self, reason: str, where: str) -> None:
        if self.skipped[reason] < 3:
            log.warning("loader: skipping %s (%s)", where, reason)
        self.skipped[reason] += 1
        if reason in NOT_A_SAMPLE:
            return
        self.bad_streak += 1
        if self.bad_streak >= self.max_bad_streak:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            raise BadDataError(
                f"loader stream {self.stream} of {self.num_streams} in {self.dir}: {self.bad_streak} bad samples in a row "
                f"(limit {self.max_bad_streak}: data.max_bad_samples or one epoch of the stream); skipped so far: "
                f"{counts}. Check the shards with `preprocess_data.py stats`")

    def _entries(self, epoch: int, name: str) -> list[_Entry]:
        if self._scan is None or self._scan[:2] != (epoch, name):
            entries, ok = scan_shard(self.dir / name)
            if not ok:
                self._skip("unreadable-tar", name)
            self._scan = (epoch, name, entries)
        return self._scan[2]

    def _read_meta(self, epoch: int, g: int) -> dict | None:
        where = self._locate(epoch, g)
        if where is None:
            return None
        name, k = where
        entries = self._entries(epoch, name)
        if k >= len(entries) or (entries[k].json_loc is None and not entries[k].bad_name):
            self._skip("missing-record", f"{name}#{k}")
            return None
        e = entries[k]
        if e.bad_name:
            self._skip("bad-member-name", f"{name}#{k}")
            return None
        try:
            with open(e.shard, "rb") as f:
                f.seek(e.json_loc[0])
                meta = json.loads(f.read(e.json_loc[1]))
            if len(meta["grids"]) != len(e.images) or not isinstance(meta["num_tokens"], int):
                raise ValueError("image count")
        except (ValueError, KeyError, OSError, TypeError):
            self._skip("bad-record", f"{name}#{k}")
            return None
        if padded_length(meta["num_tokens"], self.pad_multiple) > self.max_length:
            self._skip("longer-than-max-length", meta.get("id", f"{name}#{k}"))
            return None
        meta.update(epoch=epoch, g=g, _entry=e)
        return meta

    def _total(self) -> int:
        return sum(self.counts)

    def _fill(self) -> bool:
        """Top the buffer up; returns False when the data (all epochs) is exhausted."""
        while len(self.buffer) < self.buffer_size:
            if self.next >= self._total():
                if self.epochs is not None and self.epoch + 1 >= self.epochs:
                    return bool(self.buffer)
                self.epoch, self.next = self.epoch + 1, self.stream
                continue
            g = self.next
            self.next += self.num_streams
            meta = self._read_meta(self.epoch, g)
            if meta is not None:
                self.buffer.append(meta)
        return True

    def _load(self, meta: dict, out: torch.Tensor | None) -> Sample | None:
        e = meta["_entry"]
        try:
            datas = []
            with open(e.shard, "rb") as f:
                for off, size in e.images:
                    f.seek(off)
                    datas.append(f.read(size))
            pixels, grids = process_images(datas, self.rule, self.backend, self.pixel_dtype, out, self.image_device)
        except RowCountMismatch:
            self._skip("image-size-mismatch", meta["id"])
            return None
        except ImageBackendError:
            raise  # a broken backend is not a bad sample: fatal, with its reason
        except Exception:  # noqa: BLE001 - any other decode failure is a corrupt image
            self._skip("corrupt-image", meta["id"])
            return None
        if grids.tolist() != [list(g) for g in meta["grids"]]:
            self._skip("image-size-mismatch", meta["id"])
            return None
        try:
            enc = tokens.encode_instance(self.tokenizer, self.family, meta["question"], meta["answer"],
                                         [self.rule.grid_tokens(g) for g in grids.tolist()])
        except ValueError:
            self._skip("bad-record", meta["id"])
            return None
        if enc.input_ids.numel() != meta["num_tokens"]:
            self._skip("token-count-mismatch", meta["id"])
            return None
        return Sample(meta["id"], meta["task"], enc.input_ids, enc.target_mask, pixels, grids)

    def __iter__(self):
        """Packed micro-batches; a stream that must stop yields one ``{"loader_error": ...}`` instead
        (an exception would reach the caller of a DataLoader worker with its traceback as message)."""
        try:
            yield from self._batches()
        except (BadDataError, ImageBackendError) as err:
            yield {"loader_error": str(err), "fatal": type(err).__name__}

    def _batches(self):
        while self._fill():
            lengths = [padded_length(m["num_tokens"], self.pad_multiple) for m in self.buffer]
            chosen = set(choose_best_fit(lengths, self.max_length))
            picked = [self.buffer[i] for i in sorted(chosen, key=lambda i: (-lengths[i], i))]
            self.buffer = [m for i, m in enumerate(self.buffer) if i not in chosen]
            # Decode straight into one buffer for the whole micro-batch (sizes known from the build).
            rows = [sum(t * h * w for t, h, w in m["grids"]) for m in picked]
            direct = self.pixel_dtype == torch.float32
            pixels = torch.empty(sum(rows), self.rule.patch_dim) if direct else None
            offsets = [sum(rows[:i]) for i in range(len(rows) + 1)]
            loaded = [self._load(m, pixels[offsets[i] : offsets[i + 1]] if direct else None) for i, m in enumerate(picked)]
            samples = [s for s in loaded if s is not None]
            if not samples:
                continue
            self.bad_streak = 0
            if direct and len(samples) < len(picked):  # drop the rows of skipped samples
                pixels = torch.cat([s.pixel_values for s in samples])
            batch = pack(samples, self.family, self.max_length, self.pad_multiple, pixels, self.length_multiple)
            batch["loader_state"] = self.state()
            yield batch


class PackedDataset(torch.utils.data.IterableDataset):
    """One rank's streams as a torch IterableDataset; each worker runs one ShardStream."""

    def __init__(self, loader: PackedLoader):
        self.loader = loader

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, num = (info.id, info.num_workers) if info else (0, 1)
        ld = self.loader
        # Rotate so the DataLoader's first worker runs the stream whose batch is due next.
        k = (w + ld.next_worker) % num
        stream = ShardStream(
            ld.shard_dir, ld.index, ld.dp_rank * num + k, ld.dp_size * num, ld.max_length, ld.tokenizer_dir,
            ld.pack_buffer, ld.pad_multiple, ld.image_backend, ld.seed, ld.epochs, ld.stream_states.get(k), ld.pixel_dtype,
            ld.seq_length_multiple if ld.variable_seq_length else None, ld.image_device, ld.max_bad_samples,
        )
        for batch in stream:
            if "loader_error" not in batch:
                batch["loader_state"] = (k, batch["loader_state"])
            yield batch


class PackedLoader:
    """Per-rank packed micro-batches from training shards, with ``state_dict``/``load_state_dict``.

    It is an iterator (``next(loader)`` gives the next micro-batch); save ``state_dict()`` with a
    checkpoint; a loader given that state (``state=`` or ``load_state_dict``) continues with exactly
    the batches not yet handed out. ``from_recipe`` builds one from the recipe's data section.
    ``family``: the model family the run trains (its name); shards built for another are refused.
    """

    def __init__(self, shard_dir, tokenizer_dir, family: str, dp_rank: int = 0, dp_size: int = 1, num_workers: int = 2,
                 max_length: int | None = None, pack_buffer: int = 32, pad_multiple: int = 1, image_backend: str = "pil",
                 seed: int | None = None, epochs: int | None = None, state: dict | None = None,
                 pixel_dtype: torch.dtype = torch.float32, prefetch_factor: int = 1, variable_seq_length: bool = True,
                 seq_length_multiple: int = 128, max_bad_samples: int = 1000):
        self.shard_dir = str(shard_dir)
        self.index = read_index(shard_dir)
        built_for = shards_family(self.index)
        if built_for != family:
            raise ShardsError(f"shards in {shard_dir} were built for model family {built_for}, this run trains {family}")
        chat = get_family(family).chat.version
        if self.index.get("chat_format") != chat:
            raise ShardsError(f"shards in {shard_dir} use chat format {self.index.get('chat_format')}, {family} uses {chat}")
        self.tokenizer_dir = str(tokenizer_dir)
        self.dp_rank, self.dp_size, self.num_workers = dp_rank, dp_size, num_workers
        self.max_length = max_length or self.index["max_seq_length"]
        self.pack_buffer, self.pad_multiple, self.image_backend = pack_buffer, pad_multiple, image_backend
        self.seed = self.index["seed"] if seed is None else seed
        self.epochs, self.pixel_dtype, self.prefetch_factor = epochs, pixel_dtype, prefetch_factor
        self.variable_seq_length, self.seq_length_multiple = variable_seq_length, seq_length_multiple
        self.max_bad_samples = max_bad_samples
        if variable_seq_length and seq_length_multiple % pad_multiple:
            raise ValueError(f"seq_length_multiple {seq_length_multiple} is not a multiple of pad_multiple {pad_multiple}")
        self.image_device = None
        if image_backend == "dali":
            from megatron_vlm.data.image_dali import check_dali, rank_device

            check_dali()  # a backend that cannot run stops here, in one line, not at the first batch
            self.image_device = rank_device()
        self.stream_states: dict[int, dict] = {}
        self.next_worker = 0
        self._it = None
        if state is not None:
            self.load_state_dict(state)

    @classmethod
    def from_recipe(cls, recipe, family: str, dp_rank: int, dp_size: int, **kw) -> PackedLoader:
        """The loader of a recipe's data section, for a run that trains ``family``."""
        kw = {"variable_seq_length": recipe.variable_seq_length, "seq_length_multiple": recipe.seq_length_multiple,
              "max_bad_samples": recipe.max_bad_samples, **kw}
        return cls(recipe.shards, recipe.tokenizer, family, dp_rank, dp_size, recipe.num_workers, recipe.max_seq_length,
                   recipe.pack_buffer, recipe.pad_multiple, recipe.image_backend, recipe.seed, **kw)

    def _workers(self) -> int:
        return max(1, self.num_workers)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "dp_rank": self.dp_rank, "dp_size": self.dp_size, "num_workers": self._workers(),
                "streams": {str(k): copy.deepcopy(v) for k, v in self.stream_states.items()}, "next_worker": self.next_worker}

    def load_state_dict(self, state: dict) -> None:
        if (state["dp_rank"], state["dp_size"], state["num_workers"]) != (self.dp_rank, self.dp_size, self._workers()):
            raise ValueError("loader state was saved with a different dp rank/size or worker count")
        self.stream_states = {int(k): v for k, v in state["streams"].items()}
        self.next_worker = state["next_worker"]
        self._it = None  # the next batch comes from the restored position

    @property
    def skipped(self) -> Counter:
        """Skipped samples by reason, over all of this rank's streams, as of the batches handed out."""
        total: Counter = Counter()
        for st in self.stream_states.values():
            total.update(st["skipped"])
        return total

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._batches()
        return next(self._it)

    def close(self) -> None:
        """Stop the worker processes (a later ``next`` starts them again from the current state)."""
        if self._it is not None:
            self._it.close()
            self._it = None

    def __getstate__(self) -> dict:
        """What a worker started with ``spawn`` gets: everything but the live batch iterator."""
        return {**self.__dict__, "_it": None}

    def _batches(self):
        kw = {}
        if self.num_workers > 0:
            kw = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False,
                  "multiprocessing_context": worker_start_method(), "worker_init_fn": ignore_stop_signals}
        dl = torch.utils.data.DataLoader(PackedDataset(self), batch_size=None, num_workers=self.num_workers, **kw)
        for batch in dl:
            if "loader_error" in batch:  # a stream gave up (BadDataError) or the backend broke (ImageBackendError)
                raise (ImageBackendError if batch["fatal"] == "ImageBackendError" else BadDataError)(batch["loader_error"])
            k, st = batch.pop("loader_state")
            self.stream_states[int(k)] = st
            self.next_worker = (int(k) + 1) % self._workers()
            yield batch


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: SIGTERM and SIGUSR1 are the rank's to handle (module doc, Signals).

    SIGUSR1 is ignored. SIGTERM still ends the worker when its parent sends it (the DataLoader's
    own last resort at shutdown, as torch's worker handler does) and is ignored from anyone else:
    a thread takes it with sigwaitinfo, which tells who sent it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not Linux (macOS): SIGTERM keeps torch's worker handling
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it

    def take_sigterm() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == os.getppid():
                os._exit(0)

    threading.Thread(target=take_sigterm, name="sigterm-from-parent", daemon=True).start()


def worker_start_method() -> str | None:
    """How DataLoader workers start: ``spawn`` once CUDA is initialised in this process (a forked
    child cannot use CUDA, which the dali backend needs, and inherits a half-usable context), else
    the platform default (fork on Linux: cheap, and nothing to break)."""
    return "spawn" if torch.cuda.is_initialized() else None
