"""facts.py by hand: uniqueness of a text answer in CJK text (no spaces between words) and broken
text (a spacing accent for an umlaut) kept out of facts."""

from __future__ import annotations

import pytest

from megatron_vlm.data.synth.facts import document_facts, normalize, occurs_once


def _doc(pages: list[list[tuple[str, str]]]) -> dict:
    return {"id": "d", "pages": [
        {"index": i, "ocr": "none", "height_pt": 800, "text": "\n\n".join(t for _, t in blocks),
         "blocks": [{"kind": k, "text": t, "bbox": [50, 100 + 40 * j, 500, 130 + 40 * j]} for j, (k, t) in enumerate(blocks)]}
        for i, blocks in enumerate(pages)]}


def test_cjk_answer_counted_where_no_space_follows():
    text = normalize("可以选择以下两种方式: 直接下载MacTeX安装包进行安装将安装文件下载到本地. 3.1.1 直接下载MacTeX安装包进行安装 下载")
    assert not occurs_once("直接下载MacTeX安装包进行安装", text, ("3.1.1",))  # twice: in the sentence and as the heading
    assert occurs_once("直接下载MacTeX安装包进行安装", normalize("3.1.1 直接下载MacTeX安装包进行安装 下载"), ("3.1.1",))
    # Latin words keep their boundaries: "Results" inside "Resultsets" is not an occurrence.
    assert occurs_once("Results", normalize("Resultsets are fine. 3 Results"), ("3",))


def test_spacing_accent_title_is_not_a_fact():
    doc = _doc([[("heading", "4.4 \u00a8Anderungen seit Version 2.0"), ("paragraph", "Text.")],
                [("heading", "4.5 Neue Befehle"), ("paragraph", "Mehr Text.")]])
    facts = {f.anchors[0]: f for f in document_facts(doc) if f.kind == "section"}
    assert facts["4.4"].problem.startswith("broken text") and facts["4.5"].problem is None


def test_page_references_in_questions():
    from megatron_vlm.data.synth.validation import names_a_page

    named = ["On page 4, what is the total?", "What is on the page numbered 23?", "See p. 12 for the value.", "pp. 3-4",
             "Was steht auf Seite 5?", "第3页的标题是什么？", "What is on the 2nd page?", "What does page xiv list?"]
    not_named = ["How many pages does the report have?", "According to the section \"2 Methods\", how many pages in length?",
                 "What is the value in the column \"Pages\" for the row \"Total\"?"]
    assert all(names_a_page(q) for q in named) and not any(names_a_page(q) for q in not_named)


def test_table_with_two_header_rows_continued_over_a_page():
    head = [["Model", "Accuracy", ""], ["", "Top-1", "Top-5"]]
    page0 = [["Alpha", "71.2", "90.1"], ["Beta", "74.0", "91.5"]]
    page1 = [["Gamma", "76.3", "93.0"], ["Delta", "69.9", "88.7"]]

    def table(rows, continued_from, copied):
        return {"kind": "table", "text": "\n".join(" | ".join(r) for r in (rows if copied else head + rows)),
                "cells": head + rows, "header_rows": 2, "continued_from": continued_from, "header_copied": copied,
                "bbox": [50, 300, 500, 400]}

    doc = _doc([[("heading", "5 Results"), ("caption", "Table 4: Scores by model")], []])
    doc["pages"][0]["blocks"].append(table(page0, None, False))
    doc["pages"][1]["blocks"].append(table(page1, 0, True))
    cells = [f for f in document_facts(doc) if f.kind == "cell"]
    assert {(f.page, f.row, f.column, f.value) for f in cells} == {
        (p, row[0], col, v) for p, rows in ((0, page0), (1, page1)) for row in rows for col, v in zip(["Accuracy Top-1", "Top-5"], row[1:])}
    assert {f.table for f in cells} == {'Table 4 ("Scores by model")'} and len({f.table_id for f in cells}) == 1
    assert all(f.problem is None for f in cells)


@pytest.mark.parametrize("copies", [1, 2])
def test_reasoning_over_a_table_named_by_its_columns_passes_validation(copies):
    """copies=2: booktabs prints one example table twice on a page; a question over its column
    names each value twice, as one fact (it was rejected as combining two kinds)."""
    import random

    from megatron_vlm.data.synth.teachers import template
    from megatron_vlm.data.synth.validation import problems

    rows = [["Armadillo", "12", "8.99"], ["Emu", "30", "33.33"], ["Gnu", "150", "92.50"]]
    doc = _doc([[("heading", "1 Prices"), ("paragraph", "The list below gives prices.")]])
    for _ in range(copies):
        doc["pages"][0]["blocks"].append({"kind": "table", "text": "", "cells": [["Animal", "Weight", "Price"], *rows],
                                          "header_rows": 1, "bbox": [50, 300, 500, 400]})
        doc["pages"][0]["text"] += "\n\n" + "\n".join(" | ".join(r) for r in [["Animal", "Weight", "Price"], *rows])
    facts = [f for f in document_facts(doc) if f.problem is None]
    for seed in range(8):
        qa = template._column_question(next(c for c in template._columns(facts) if c[0].column == "Price"), random.Random(seed))
        if qa:
            record = {**qa, "task": "reasoning", "segment": [0, 1], "doc_id": "d", "id": "r"}
            assert 'the table with the columns "Animal", "Weight", "Price"' in qa["question"]
            assert problems(record, doc) == [], qa["question"]


def test_a_table_whose_first_row_is_data_gives_no_cells():
    """biblatex's German manual lists an option's values and what each does as a two-column table
    without a header (true | Aktiviert Katalogisierung für alles. / false | ... / bib | ...); its
    first row was taken for column names ('the value in the column "Aktiviert Katalogisierung für
    alles." for the row "bib"'). Column names that are sentences, numbers, code, run long, run on
    into the next cell (a list set in columns) or open the cells below them (examples) are no
    header; years and short names are."""
    def table(rows):
        return {"kind": "table", "text": "\n".join(" | ".join(r) for r in rows), "cells": rows, "header_rows": 1,
                "continued_from": None, "header_copied": False, "bbox": [50, 300, 500, 400]}

    options = [["true", "Aktiviert Katalogisierung für alles."], ["false", "Deaktiviert Katalogisierung für alles."],
               ["cite", "Aktiviert Katalogisierung nur für Literaturverweise."], ["bib", "Aktiviert Katalogisierung nur für die Bibliografie."]]
    history = [["v2.0 (2014/03/06)", "将章节标题设置功能提取到可以独立使用的宏包"], ["v2.1 (2015/06/20)", "增加对 upTeX 的支持"],
               ["v2.2 (2015/07/03)", "修正已知问题"]]
    code = [["1821", r"{\FootAnnexeTxtFont \MakeUppercase{\StringCorriges}}"], [r"\ps@annexe", "des pages suivantes"],
            [r"\ps@firstannexe", "des premières pages"]]
    revenue = [["Region", "2022", "2023 (USD)"], ["North", "4,312", "4,870"], ["South", "3,905", "4,118"]]
    # listings' list of languages set in two columns: a name runs on into the next cell
    languages = [["ABAP (R/2 4.3, R/2 5.0, R/3 3.1,", "R/3 4.6C, R/3 6.10)"], ["ACM", "ACMscript"], ["ACSL", "Ada (2005, 83, 95)"]]
    # gerdoc's examples of input and output: the header's "ergibt:" opens every row's cell too
    examples = [['Dru"cker', "ergibt: Drucker", "bzw. Druk-ker"], ['Ro"lladen', "ergibt: Rolladen", "bzw. Roll-laden"],
                ['Be"ttuch', "ergibt: Bettuch", "bzw. Bett-tuch"]]
    doc = _doc([[("heading", "3 Optionen")], [("heading", "4 Versionen")], [("heading", "5 Styles")], [("heading", "6 Revenue")],
                [("heading", "7 Sprachen")], [("heading", "8 Trennung")]])
    for page, rows in enumerate((options, history, code, revenue, languages, examples)):
        doc["pages"][page]["blocks"].append(table(rows))
    cells = [f for f in document_facts(doc) if f.kind == "cell"]
    assert {(f.page, f.row, f.column, f.value) for f in cells} == {
        (3, "North", "2022", "4,312"), (3, "North", "2023 (USD)", "4,870"), (3, "South", "2022", "3,905"), (3, "South", "2023 (USD)", "4,118")}


def test_a_table_caption_the_layout_calls_text_names_its_table():
    """siunitx's manual, page 68: 'Table 42: Tables where numbers have different units.' above a
    table came out as a paragraph, and the caption below it ('Table 43: Header row in a table.',
    of the next table) named its cells ('In Table 43 (...), what is the value ... "µ/mm−1"')."""
    rows = [["", "One", "Two"], ["a/pm", "123.4(2)", "567.8(4)"], ["µ/mm−1", "0.532", "0.894"]]
    doc = _doc([[("paragraph", "Table 42: Tables where numbers have different units."), ("caption", "Table 43: Header row in a table."),
                 ("paragraph", "123.456 23.45 123.4 3.456")]])
    doc["pages"][0]["blocks"].insert(1, {"kind": "table", "text": "\n".join(" | ".join(r) for r in rows), "cells": rows,
                                         "header_rows": 1, "continued_from": None, "header_copied": False, "bbox": [50, 150, 500, 200]})
    cells = [f for f in document_facts(doc) if f.kind == "cell"]
    assert cells and {f.table for f in cells} == {'Table 42 ("Tables where numbers have different units")'}



def test_a_chinese_table_caption_names_its_table():
    """zh_texproposal's '表1: 顶级学术期刊出版社TEX 支持情况' above its table (and ctex's bare '表1'):
    the cells are named by the label as the document writes it, not by the column names."""
    rows = [["出版社", "模板", "年份"], ["Elsevier", "elsarticle", "2019"], ["Springer", "svjour3", "2020"]]
    for caption, name in (("表1: 顶级学术期刊出版社TEX 支持情况", '表1 ("顶级学术期刊出版社TEX 支持情况")'),
                          ("表 2：期刊", '表2 ("期刊")'), ("表3", "表3")):
        doc = _doc([[("caption", caption), ("paragraph", "正文。")]])
        doc["pages"][0]["blocks"].insert(1, {"kind": "table", "text": "\n".join(" | ".join(r) for r in rows), "cells": rows,
                                             "header_rows": 1, "continued_from": None, "header_copied": False,
                                             "bbox": [50, 150, 500, 200]})
        cells = [f for f in document_facts(doc) if f.kind == "cell"]
        assert cells and {f.table for f in cells} == {name}, caption


def test_a_quantity_whose_clause_recurs_with_another_number_is_ambiguous():
    """AMC's manual: 'If the first is ticked, the student will get 0 point. If the second is ticked,
    the student will get 1 point. If the third is ticked, the student will get 2 points.' asked
    'the student will get how many points?' -> 2 (the singular '0 point' and '1 point' are no facts,
    so the key check saw one value)."""
    text = ("In this example the teacher will get three boxes. If the first box is ticked, the student will get 0 point. "
            "If the second box is ticked, the student will get 1 point. If the third box is ticked, the student will get 2 points.")
    once = "The committee of this school recruited 24 participants for the trial of the new method."
    doc = _doc([[("heading", "5.4 Open questions"), ("paragraph", text), ("paragraph", once)]])
    facts = {f.value: f for f in document_facts(doc) if f.kind == "quantity"}
    assert facts["2"].problem is not None and facts["24"].problem is None


def test_a_quantity_clause_starts_at_its_subject_not_at_a_linking_word():
    """listings: 'where the base width is how many em in the example?' was asked; the clause's own
    words, without the 'where' that links it to the sentence, make the question."""
    text = "The columns are fixed, where the base width is 0.6 em in the example of this section."
    doc = _doc([[("heading", "2.10 Fixed and flexible columns"), ("paragraph", text)]])
    (fact,) = [f for f in document_facts(doc) if f.kind == "quantity"]
    assert fact.value == "0.6" and fact.problem is None
    assert fact.ask() == 'According to the section "2.10 Fixed and flexible columns", the base width is how many em in the example of this section?'


def test_section_titles_a_contents_page_lists_are_asked_last_and_never_in_lists():
    """zh_ctex_manual: 18 of 40 graded questions asked a section title its contents pages list too
    ("What is the title of section 14.8.6?"), answerable without finding the section. Such a title is
    `listed` with the contents page; the template teacher asks every other fact of the segment first
    and never gathers listed titles into a list question."""
    import random

    from megatron_vlm.data.synth.teachers.template import multi, single

    contents = ("paragraph", "Contents\n2.1 Template Styles . . . . 2\n2.2 Page Sizes . . . . 3")
    doc = _doc([[contents], [("heading", "2 Templates"), ("paragraph", "How a class is chosen.")],
                [("heading", "2.1 Template Styles"), ("paragraph", "Each class has a style.")],
                [("heading", "2.2 Page Sizes"), ("paragraph", "Margins are set per document.")],
                [("heading", "2.3 Fonts"), ("paragraph", "Every glyph is embedded.")]])
    facts = [f for f in document_facts(doc) if f.problem is None]
    listed = {f.value: f.listed for f in facts if f.kind == "section"}
    assert listed == {"Templates": (), "Template Styles": (0,), "Page Sizes": (0,), "Fonts": ()}
    asked = [single(facts, random.Random(7), k)["question"] for k in range(len(facts))]
    assert sorted(asked[:2]) == ["What is the title of section 2.3?", "What is the title of section 2?"]
    assert sorted(asked[2:]) == ["What is the title of section 2.1?", "What is the title of section 2.2?"]
    for seed in range(20):
        qa = multi(facts, random.Random(seed))
        assert qa is None or not any(n in qa["question"] for n in ("2.1", "2.2")), qa
