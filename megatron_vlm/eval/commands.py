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
    log=print,
) -> dict:
    """Build an eval set from POOL + QA records, or re-pad the documents of an eval JSONL file."""
    if from_jsonl:
        docs, questions = contexts.read_document_jsonl(from_jsonl)
        sources = {"jsonl": str(from_jsonl)}
    elif pool and qa:
        docs, questions = contexts.read_pool(pool), contexts.read_qa_records(qa)
        sources = {"pool": str(pool), "qa": str(qa)}
    else:
        raise ValueError("give --pool and --qa, or --from-jsonl")
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


def make_backend(
    kind,
    model=None,
    url=None,
    served_model=None,
    max_new_tokens=64,
    concurrency=4,
    retries=4,
    tokenizer=None,
    preprocessor=None,
    device=None,
    api_key_env="OPENAI_API_KEY",
    cache_dir=None,
):
    if kind == "hf":
        if not model:
            raise ValueError("--backend hf needs --model HF_DIR")
        if not (Path(model) / "config.json").is_file():
            raise FileNotFoundError(f"no HF checkpoint (config.json) in {model}")
        from megatron_vlm.eval.backends import HFBackend

        return HFBackend(
            model, device=device, max_new_tokens=max_new_tokens, tokenizer_dir=tokenizer, preprocessor_dir=preprocessor
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
        )
    raise ValueError(f"unknown backend {kind!r} (hf | openai)")


def run(eval_set, output, backend, model_name, limit=None, log=print) -> Path:
    """Answer every item of EVAL_SET (dir or .jsonl) with ``backend``; write predictions to OUTPUT."""
    items = evalset.read_eval_set(eval_set)
    if limit:
        items = items[:limit]
    log(f"running {len(items)} items of {eval_set} through {model_name}")
    path = run_eval(items, backend, output, model_name, log)
    log(f"wrote {len(items)} predictions to {path}")
    return path


def score(
    predictions,
    output=None,
    report_dir=None,
    string_metric="anls",
    model=None,
    judge_url=None,
    judge_model=None,
    judge_concurrency=4,
    log=print,
) -> dict:
    """Score a predictions JSONL; write per-line scores (default PRED.scored.jsonl) and report.json/.md.

    With ``judge_url`` and ``judge_model`` an LLM judge adds ``judge_score`` per line and
    ``judge`` to the report; the rule-based score stays the headline.
    """
    predictions = Path(predictions)
    rows = read_jsonl(predictions)
    if not rows:
        raise ValueError(f"{predictions} has no predictions")
    scored = scoring.score_records(rows, string_metric)
    if judge_url or judge_model:
        if not (judge_url and judge_model):
            raise ValueError("the judge needs both --judge-url and --judge-model")
        from megatron_vlm.eval.judge import judge_records

        log(f"asking judge {judge_model} at {judge_url} about {len(scored)} predictions")
        scored = judge_records(scored, judge_url, judge_model, concurrency=judge_concurrency)
    output = Path(output) if output else predictions.with_name(predictions.stem + ".scored.jsonl")
    write_jsonl_atomic(output, scored)
    name = model or rows[0].get("model") or predictions.stem
    rep = report.build_report(scored, model=name)
    rep["string_metric"] = string_metric
    rep["errors"] = sum(1 for r in rows if r.get("error"))
    if judge_model:
        from megatron_vlm.eval.judge import judge_accuracy

        rep["judge"] = {"model": judge_model, **judge_accuracy(scored)}
    report_dir = Path(report_dir) if report_dir else output.parent
    write_json_atomic(report_dir / f"{output.stem}.report.json", rep)
    write_text_atomic(report_dir / f"{output.stem}.report.md", report.report_markdown(rep))
    overall = rep["overall"]
    log(f"scored {overall['n']} predictions -> {output}; report -> {report_dir / (output.stem + '.report.md')}")
    log(
        f"overall accuracy {100 * overall['accuracy']:.2f}  F1 {100 * overall['f1']:.2f}  (n={overall['n']}, "
        f"string metric {string_metric}, {rep['errors']} request errors)"
    )
    if "judge" in rep:
        j = rep["judge"]
        log(f"judge {j['model']}: accuracy {100 * j['accuracy']:.2f} over {j['n']} judged ({j['unjudged']} unjudged)")
    return rep


def compare(base, trained, output_dir, log=print) -> dict:
    """Side-by-side of two scored predictions files or report.json files; writes compare.json/.md."""

    def load(path):
        path = Path(path)
        if path.suffix == ".json":
            return json.loads(path.read_text())
        rows = read_jsonl(path)
        if rows and "score" not in rows[0]:
            rows = scoring.score_records(rows)
        return report.build_report(rows, model=(rows[0].get("model") if rows else None) or path.stem)

    b, t = load(base), load(trained)
    comparison = report.compare_reports(b, t)
    out = Path(output_dir)
    write_json_atomic(out / "compare.json", comparison)
    md = report.compare_markdown(comparison)
    write_text_atomic(out / "compare.md", md)
    log(md)
    log(f"wrote {out / 'compare.json'} and {out / 'compare.md'}")
    return comparison


def needle_build(pool, output, lengths, depths, trials=1, dpi=144, exclude=None, tokenizer=None, seed=0, log=print):
    docs = contexts.read_pool(pool)
    excluded = contexts.read_exclusions(exclude) if exclude else set()
    summary = needle.build_needle_set(
        docs, output, lengths, depths, trials, dpi, excluded, seed, _prompt_counter(tokenizer), log
    )
    log(
        f"wrote {summary['items']} needle items ({len(lengths)} lengths x {len(depths)} depths x {trials} trials, "
        f"skipped {summary['skipped'] or 'none'}) to {output}"
    )
    return summary


def needle_plot(scored_predictions, output, title=None, log=print):
    rows = read_jsonl(scored_predictions)
    if rows and "score" not in rows[0]:
        rows = scoring.score_records(rows)
    rows = [r for r in rows if r.get("task") == "needle"] or rows
    path = needle.plot_heatmap(rows, output, title or f"Needle in a document: {rows[0].get('model', '')}")
    log(f"wrote needle heatmap ({len(rows)} predictions) to {path}")
    return path
