"""The work behind each `tools/evaluate.py` subcommand (the tool itself only parses arguments).

Every function prints what it did and where its output went; bad input raises ValueError or
FileNotFoundError / FileExistsError with a one-line reason, which the tool prints and exits on.
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_vlm.eval import contexts, evalset, needle, report, scoring
from megatron_vlm.eval.files import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from megatron_vlm.eval.runner import run_eval
from megatron_vlm.models.family import DEFAULT_FAMILY
from megatron_vlm.utils import atomic


def _prompt_counter(tokenizer_dir):
    if not tokenizer_dir:
        return None
    from transformers import AutoTokenizer

    from megatron_vlm.eval.prompts import load_chat_template, prompt_tokens

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    template = load_chat_template(tokenizer_dir) or tok.chat_template
    return lambda question: prompt_tokens(question, tok, template)


def build(
    output,
    lengths,
    depths,
    pool=None,
    qa=None,
    from_jsonl=None,
    exclude=None,
    tokenizer=None,
    seed=0,
    max_questions=None,
    image_root=None,
    log=print,
    family=None,
) -> dict:
    """Build an eval set from POOL + QA records, or re-pad the documents of an eval JSONL file
    (its image paths relative to ``image_root``, default the file's directory). Pages are costed
    with ``family``'s image rule (the model to evaluate; default: the pool's family, or Qwen2.5-VL's)."""
    if from_jsonl:
        family = family or DEFAULT_FAMILY
        docs, questions = contexts.read_document_jsonl(from_jsonl, image_root, family)
        sources = {"jsonl": str(from_jsonl)}
    elif pool and qa:
        family = family or contexts.pool_family(pool)
        docs, questions = contexts.read_pool(pool, family), contexts.read_qa_records(qa)
        sources = {"pool": str(pool), "qa": str(qa)}
    else:
        raise ValueError("give --pool and --qa, or --from-jsonl")
    sources["family"] = family  # whose image rule costed the pages
    excluded = contexts.read_exclusions(exclude) if exclude else set()
    sources["exclude"] = str(exclude) if exclude else None
    log(f"read {len(docs)} documents and {len(questions)} questions; excluding {len(excluded)} training documents")
    summary = evalset.build_eval_set(
        docs,
        questions,
        output,
        lengths,
        depths,
        excluded,
        seed,
        _prompt_counter(tokenizer),
        max_questions,
        sources,
        log,
    )
    log(
        f"wrote {summary['items']} items ({summary['questions']} questions x {len(lengths)} lengths x "
        f"{len(depths)} depths, {summary['images']} page images, skipped {summary['skipped'] or 'none'}) to {output}"
    )
    return summary


IMPORT_KINDS = ("mmlongbench", "mmlongbench-doc", "longdocurl", "slidevqa")


def import_benchmark(
    kind, inputs, output, image_root=None, documents=None, samples=None, seed=None, lengths=None, dpi=144, log=print,
    family=None,
) -> dict:
    """Import a public benchmark (``IMPORT_KINDS``) into EVAL_DIR (docs/eval_format.md, "Importing").

    ``inputs``: MMLongBench's doc-QA files (or their directory), or the dataset's question file.
    Images stay under ``image_root`` (recorded in eval.json; ``run`` and ``build --from-jsonl`` then
    need ``--image-root``), except MMLongBench-Doc's, rendered from ``documents`` into EVAL_DIR/images.
    Pages are costed (``tokens``, ``grid_thw``) with ``family``'s image rule (default Qwen2.5-VL's).
    The directory is assembled aside and renamed into place (utils.atomic).
    """
    from megatron_vlm.eval import importers

    family = family or DEFAULT_FAMILY

    samples = importers.SAMPLES if samples is None else samples
    seed = importers.SEED if seed is None else seed
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new output directory")
    files = []
    for given in inputs:
        given = Path(given)
        files += sorted(given.glob("*_K*.jsonl")) if given.is_dir() else [given]
    if not files:
        raise ValueError("no input files")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no such input file: {missing[0]}")
    if kind == "mmlongbench-doc":
        if not documents or len(files) != 1:
            raise ValueError("import mmlongbench-doc needs one samples.json and --documents PDF_DIR")
    elif not image_root:
        raise ValueError(f"import {kind} needs --image-root DIR (where its page images are)")
    elif kind != "mmlongbench" and len(files) != 1:
        raise ValueError(f"import {kind} reads one question file")
    log(f"importing {kind} from {len(files)} file(s)")
    with atomic.atomic_dir(output, inputs=files) as tmp:
        if kind == "mmlongbench":
            items = importers.import_mmlongbench(files, image_root, samples, seed, lengths, log, family)
        elif kind == "mmlongbench-doc":
            items = importers.import_mmlongbench_doc(files[0], documents, tmp, dpi, samples, seed, log, family)
        elif kind == "longdocurl":
            items = importers.import_longdocurl(files[0], image_root, samples, seed, log, family)
        elif kind == "slidevqa":
            items = importers.import_slidevqa(files[0], image_root, samples, seed, log, family)
        else:
            raise ValueError(f"unknown benchmark {kind!r} ({' | '.join(IMPORT_KINDS)})")
        if not items:
            raise ValueError("no questions imported")
        summary = {
            "version": evalset.FORMAT_VERSION,
            "benchmark": importers.BENCHMARK,
            "imported": kind,
            "sources": [str(f) for f in files],
            "samples_per_file": samples,
            "seed": seed,
            "family": family,
            "items": len(items),
            "image_root": None if kind == "mmlongbench-doc" else str(Path(image_root).resolve()),
        }
        write_jsonl_atomic(tmp / "eval.jsonl", items)
        write_json_atomic(tmp / "eval.json", summary)
    log(f"wrote {len(items)} items to {output}" + (f" (images under {summary['image_root']})" if summary["image_root"] else ""))
    return summary


def make_backend(
    kind,
    model=None,
    url=None,
    served_model=None,
    max_new_tokens=None,
    concurrency=4,
    retries=4,
    tokenizer=None,
    preprocessor=None,
    device=None,
    api_key_env="OPENAI_API_KEY",
    cache_dir=None,
    prompt_mode="default",
):
    if kind == "hf":
        if not model:
            raise ValueError("--backend hf needs --model HF_DIR")
        if not (Path(model) / "config.json").is_file():
            raise FileNotFoundError(f"no HF checkpoint (config.json) in {model}")
        from megatron_vlm.eval.backends import HFBackend

        return HFBackend(
            model,
            device=device,
            max_new_tokens=max_new_tokens,
            tokenizer_dir=tokenizer,
            preprocessor_dir=preprocessor,
            prompt_mode=prompt_mode,
        )
    if kind == "openai":
        if not url or not served_model:
            raise ValueError("--backend openai needs --url and --served-model")
        from megatron_vlm.eval.backends import OpenAIBackend

        return OpenAIBackend(
            url,
            served_model,
            max_new_tokens=max_new_tokens,
            concurrency=concurrency,
            retries=retries,
            api_key_env=api_key_env,
            cache_dir=cache_dir,
            prompt_mode=prompt_mode,
        )
    raise ValueError(f"unknown backend {kind!r} (hf | openai)")


def prepare_run(eval_set, output, image_root=None, limit=None) -> list[dict]:
    """The items ``run`` will answer, every check made (eval file, image paths, output free) before
    a model is loaded."""
    if Path(output).exists():
        raise FileExistsError(f"{output} exists; choose a new output file")
    items = evalset.read_eval_set(eval_set, image_root)
    return items[:limit] if limit else items


def run(eval_set, output, backend, model_name, limit=None, image_root=None, items=None, log=print) -> Path:
    """Answer every item of EVAL_SET (dir or .jsonl) with ``backend``; write predictions to OUTPUT.

    Image paths are relative to ``image_root`` (default: the eval set's directory) and confined to
    it. ``items``: already prepared by ``prepare_run``.
    """
    items = items if items is not None else prepare_run(eval_set, output, image_root, limit)
    log(f"running {len(items)} items of {eval_set} through {model_name}")
    path = run_eval(items, backend, output, model_name, log)
    log(f"wrote {len(items)} predictions to {path}")
    return path


def _writable_dir(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is not a directory")


def score(
    predictions,
    output=None,
    report_dir=None,
    rules=None,
    string_metric=None,
    model=None,
    judge_url=None,
    judge_model=None,
    judge_concurrency=4,
    log=print,
) -> dict:
    """Score a predictions JSONL; write per-line scores (default PRED.scored.jsonl) and report.json/.md.

    ``rules``: mmlongbench | legacy, default from the lines' ``benchmark`` (scoring.default_rules).
    ``string_metric`` (anls | f1) applies to the legacy rules only. With ``judge_url`` and
    ``judge_model`` an LLM judge adds ``judge_score`` per line and ``judge`` to the report; the
    rule-based score stays the headline. Everything is computed and checked before the first file
    is written; the scored lines are written last.
    """
    predictions = Path(predictions)
    rows = read_jsonl(predictions)
    if not rows:
        raise ValueError(f"{predictions} has no predictions")
    if bool(judge_url) != bool(judge_model):
        raise ValueError("the judge needs both --judge-url and --judge-model")
    output = Path(output) if output else predictions.with_name(predictions.stem + ".scored.jsonl")
    report_dir = Path(report_dir) if report_dir else output.parent
    if output.resolve() == predictions.resolve():
        raise ValueError(f"--output {output} is the predictions file itself")
    _writable_dir(output.parent, "--output's directory")
    _writable_dir(report_dir, "--report-dir")
    scored = scoring.score_records(rows, rules, string_metric, source=predictions)
    rules = scored[0]["rules"]
    name = model or rows[0].get("model") or predictions.stem
    rep = report.build_report(scored, model=name)
    if judge_url:
        from megatron_vlm.eval.judge import judge_accuracy, judge_records

        log(f"asking judge {judge_model} at {judge_url} about {len(scored)} predictions")
        scored = judge_records(scored, judge_url, judge_model, concurrency=judge_concurrency)
        rep["judge"] = {"model": judge_model, **judge_accuracy(scored)}
    rep["rules"] = rules
    rep["string_metric"] = (string_metric or "anls") if rules == "legacy" else "token-f1"
    rep["errors"] = sum(1 for r in rows if r.get("error"))
    markdown = report.report_markdown(rep)
    write_json_atomic(report_dir / f"{output.stem}.report.json", rep)
    write_text_atomic(report_dir / f"{output.stem}.report.md", markdown)
    write_jsonl_atomic(output, scored)
    overall = rep["overall"]
    log(f"scored {overall['n']} predictions -> {output}; report -> {report_dir / (output.stem + '.report.md')}")
    log(
        f"overall accuracy {100 * overall['accuracy']:.2f}  F1 {100 * overall['f1']:.2f}  (n={overall['n']}, "
        f"rules {rules}, strings by {rep['string_metric']}, {rep['errors']} request errors)"
    )
    if "judge" in rep:
        j = rep["judge"]
        log(f"judge {j['model']}: accuracy {100 * j['accuracy']:.2f} over {j['n']} judged ({j['unjudged']} unjudged)")
    return rep


def _load_report(path) -> dict:
    """A report from a report .json, or from a (scored or raw) predictions .jsonl (scored by its default rules)."""
    path = Path(path)
    if path.suffix == ".json":
        rep = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rep, dict) or "overall" not in rep:
            raise ValueError(f"{path} is not a report .json")
        return rep
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} has no predictions")
    if any("score" not in r for r in rows):
        rows = scoring.score_records(rows, source=path)
    return report.build_report(rows, model=rows[0].get("model") or path.stem)


def compare(base, trained, output_dir, log=print) -> dict:
    """Side-by-side of two scored predictions files or report.json files; writes compare.json/.md."""
    comparison = report.compare_reports(_load_report(base), _load_report(trained))
    md = report.compare_markdown(comparison)
    out = Path(output_dir)
    _writable_dir(out, "--output")
    write_json_atomic(out / "compare.json", comparison)
    write_text_atomic(out / "compare.md", md)
    log(md)
    log(f"wrote {out / 'compare.json'} and {out / 'compare.md'}")
    return comparison


def needle_build(pool, output, lengths, depths, trials=1, dpi=144, exclude=None, tokenizer=None, seed=0, log=print,
                 family=None):
    """A needle eval set; pages (haystack and needles) costed with ``family``'s rule (default: the pool's)."""
    family = family or contexts.pool_family(pool)
    docs = contexts.read_pool(pool, family)
    excluded = contexts.read_exclusions(exclude) if exclude else set()
    summary = needle.build_needle_set(
        docs, output, lengths, depths, trials, dpi, excluded, seed, _prompt_counter(tokenizer), log, family
    )
    log(
        f"wrote {summary['items']} needle items ({len(lengths)} lengths x {len(depths)} depths x {trials} trials, "
        f"skipped {summary['skipped'] or 'none'}) to {output}"
    )
    return summary


def needle_plot(scored_predictions, output, title=None, log=print):
    rows = read_jsonl(scored_predictions)
    if not rows:
        raise ValueError(f"{scored_predictions} has no predictions")
    if any("score" not in r for r in rows):
        rows = scoring.score_records(rows, source=scored_predictions)
    rows = [r for r in rows if r.get("task") == "needle"] or rows
    path = needle.plot_heatmap(rows, output, title or f"Needle in a document: {rows[0].get('model', '')}")
    log(f"wrote needle heatmap ({len(rows)} predictions) to {path}")
    return path
