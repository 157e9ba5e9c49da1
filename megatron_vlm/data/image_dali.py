"""The ``dali`` image backend: decode and resize page images on this rank's GPU with NVIDIA DALI.

    arrays = decode_resize_dali(datas, sizes, device_id)   # uint8 [H, W, 3] each, the sizes asked for

What the loader relies on (docs/data.md, "Image backends"):

- Device. Each rank decodes on its own GPU: ``device_id`` is passed down from the process that
  owns the rank (``rank_device()``: the trainer's CUDA device, else ``LOCAL_RANK``), never a
  hard-coded 0.
- One pipeline per (process, GPU), built on first use and fed every later call (``feed_input``),
  not one pipeline per sample. A pipeline that failed is dropped and rebuilt on the next call.
- Never in a child forked after CUDA started: CUDA cannot be initialised in such a child. The
  loader starts its workers with ``spawn`` once CUDA is up in its process
  (``loader.worker_start_method``), and the cache is keyed by process id.
- Failure taxonomy. An image that PIL cannot read either is a bad sample (PIL's own exception,
  counted and skipped by the loader). DALI missing, no GPU, a pipeline that cannot be built, or a
  pipeline that fails on images PIL decodes is a broken backend: ``ImageBackendError``, fatal.

``nvidia.dali`` is imported only when a pipeline is built, so this module imports on CPU.
"""

from __future__ import annotations

import io
import os

import numpy as np

from megatron_vlm.data.image_processing import ImageBackendError

MAX_BATCH = 32
"""Images per pipeline run; a call with more runs the pipeline several times."""

_DECODERS: dict[tuple[int, int], DaliDecoder] = {}


def rank_device() -> int:
    """This rank's GPU index: the trainer's device (``megatron_vlm.parallel.device()``) when it is a
    GPU, else ``LOCAL_RANK`` (torchrun's one GPU per local rank)."""
    from megatron_vlm.parallel import device

    return device().index if device().is_cuda else int(os.environ.get("LOCAL_RANK", "0"))


def check_dali() -> None:
    """Raise ``ImageBackendError`` (one line) when the dali backend cannot run in this process."""
    import torch

    try:
        import nvidia.dali  # noqa: F401 - optional dependency
    except ImportError as err:
        raise ImageBackendError(f"data.image_backend=dali needs NVIDIA DALI ({err}); install nvidia-dali-cuda* "
                                "or set data.image_backend=pil") from None
    if not torch.cuda.is_available():
        raise ImageBackendError("data.image_backend=dali needs a CUDA GPU, and none is visible; "
                                "set data.image_backend=pil")


class DaliDecoder:
    """One DALI pipeline on one GPU: mixed (GPU) decode to RGB, then cubic resize with antialias to
    per-image sizes fed with the encoded bytes. Built once; ``__call__`` feeds and runs it."""

    def __init__(self, device_id: int, max_batch: int = MAX_BATCH, num_threads: int = 2):
        try:
            from nvidia.dali import fn, pipeline_def, types
        except ImportError as err:
            raise ImageBackendError(f"data.image_backend=dali needs NVIDIA DALI ({err})") from None
        self.device_id, self.max_batch = device_id, max_batch

        # Fed by feed_input before every run: no prefetching, no asynchronous executor to keep fed.
        @pipeline_def(batch_size=max_batch, num_threads=num_threads, device_id=device_id,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            height = fn.external_source(name="height", dtype=types.FLOAT)
            width = fn.external_source(name="width", dtype=types.FLOAT)
            images = fn.decoders.image(encoded, device="mixed", output_type=types.RGB)
            return fn.resize(images, resize_x=width, resize_y=height, interp_type=types.INTERP_CUBIC, antialias=True)

        try:
            self.pipe = pipeline()
            self.pipe.build()
        except Exception as err:  # noqa: BLE001 - whatever DALI raises, the backend is unusable
            raise ImageBackendError(f"DALI could not build its pipeline on GPU {device_id}: {err}") from err

    def __call__(self, datas: list[bytes], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """uint8 [h, w, 3] per image, resized to its (h, w) in ``sizes``."""
        out: list[np.ndarray] = []
        for start in range(0, len(datas), self.max_batch):
            chunk = range(start, min(start + self.max_batch, len(datas)))
            self.pipe.feed_input("encoded", [np.frombuffer(datas[i], dtype=np.uint8) for i in chunk])
            self.pipe.feed_input("height", [np.array(sizes[i][0], dtype=np.float32) for i in chunk])
            self.pipe.feed_input("width", [np.array(sizes[i][1], dtype=np.float32) for i in chunk])
            (images,) = self.pipe.run()
            images = images.as_cpu()
            out += [np.array(images.at(k), dtype=np.uint8) for k in range(len(chunk))]
        return out


def decoder_for(device_id: int) -> DaliDecoder:
    """This process's pipeline on ``device_id``, built on first use."""
    key = (os.getpid(), device_id)
    if key not in _DECODERS:
        _DECODERS[key] = DaliDecoder(device_id)
    return _DECODERS[key]


def decode_resize_to(datas: list[bytes], sizes: list[tuple[int, int]], device_id: int | None = None) -> list[np.ndarray]:
    """Decode and resize on GPU ``device_id`` (default: ``rank_device()``) to the given (h, w) sizes.

    Raises PIL's error for an image PIL cannot decode either (a bad sample) and ``ImageBackendError``
    when DALI fails on images that PIL decodes, or returns other sizes than asked (a broken backend).
    """
    device_id = rank_device() if device_id is None else device_id
    try:
        arrays = decoder_for(device_id)(datas, sizes)
    except ImageBackendError:
        raise
    except Exception as err:  # noqa: BLE001 - sorted out below: a bad image or a broken backend
        _DECODERS.pop((os.getpid(), device_id), None)  # never reuse a pipeline that failed
        _decode_all_with_pil(datas)  # raises for a corrupt image: that is the sample's fault
        raise ImageBackendError(f"DALI failed on GPU {device_id} on {len(datas)} image(s) that PIL decodes: "
                                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    for a, (h, w) in zip(arrays, sizes):
        if a.shape != (h, w, 3):
            raise ImageBackendError(f"DALI returned an image of shape {a.shape}, asked for {(h, w, 3)}")
    return arrays


def _decode_all_with_pil(datas: list[bytes]) -> None:
    from PIL import Image

    for data in datas:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
