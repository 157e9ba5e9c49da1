"""pymupdf's layout model (pymupdf >= 2.0, `pymupdf.layout`), loaded once per process.

    groups = page_regions(page)   # [{"class_name", "group_bbox", "table_grid", ...}, ...] in reading order

The model is a graph network over a page's text, image and vector boxes (ONNX, on the CPU); it
labels regions text / title / section-header / list-item / caption / footnote / formula /
picture / table / page-header / page-footer, orders them for reading, and predicts the row and
column lines of each table. It costs ~0.3-0.7 s of CPU per page (benchmarks/bench_pool.py).

Two things are set around it here:
- its ONNX sessions run single-threaded: the pool already runs one document per worker process,
  and ONNX Runtime's default (a thread per core in every process) oversubscribes the machine and
  spends CPU spinning (measured 0.85 -> 0.53 s of CPU per page);
- MuPDF's anti-aliasing levels are restored after each call: the model's vector-line features
  set them to 0 process-wide, which would change every page rendered afterwards.
"""

from __future__ import annotations

from functools import lru_cache

import pymupdf


def _single_threaded(model, depth: int = 0, seen: set | None = None) -> None:
    """Replace every ONNX session reachable from `model`'s attributes by a one-thread copy."""
    import onnxruntime as ort

    seen = set() if seen is None else seen
    if id(model) in seen or depth > 3 or not hasattr(model, "__dict__"):
        return
    seen.add(id(model))
    for name, value in list(vars(model).items()):
        if isinstance(value, ort.InferenceSession) and getattr(value, "_model_path", None):
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.enable_cpu_mem_arena = False
            setattr(model, name, ort.InferenceSession(value._model_path, sess_options=options, providers=value.get_providers()))
        elif type(value).__module__.startswith("pymupdf"):
            _single_threaded(value, depth + 1, seen)


@lru_cache(maxsize=1)
def analyzer():
    """The layout analyzer of this process (pymupdf.layout's default model), single-threaded."""
    from pymupdf.layout import DocumentLayoutAnalyzer

    model = DocumentLayoutAnalyzer.get_model()
    _single_threaded(model)
    return model


def page_regions(page: pymupdf.Page) -> list[dict]:
    """The model's regions of one page, in its reading order (raw form: class_name, group_bbox,
    and for tables table_grid)."""
    aa = pymupdf.TOOLS.show_aa_level()
    try:
        return list(analyzer().predict(page, return_raw=True) or [])
    finally:
        m = pymupdf.mupdf
        m.fz_set_text_aa_level(aa["text"])
        m.fz_set_graphics_aa_level(aa["graphics"])
        m.fz_set_graphics_min_line_width(aa["graphics_min_line_width"])
