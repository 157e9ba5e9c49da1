"""Checkable facts read from a whole pool document, each with what a question must name to ask it.

Three kinds, all from text a reader would cite:
- `cell`: a table cell, named by its row and column headers and its table (the caption's label
  such as "Table 3" when that label is unique in the document, else the section it is in);
- `quantity`: a number in a sentence with its unit or counted noun ("24 participants", "3.5 ms",
  "12%"), named by the clause it is in and the section;
- `section`: the title of a numbered section ("2.1 Template Styles"), named by its number.

Where facts come from: body blocks (paragraph, list, table) of pages whose text is good
(`page_problem`); never headings (except as section titles), captions, running headers, footers,
page numbers, or a block whose text (digits masked) recurs on three or more pages. A table gives
cells only when its header cells read as column names (`is_column_name`) and not as one more row
(`header_reads_as_data`): a two-column list of options and what they do, or of examples, set
without a header, has a data row where its header would be. A fact is
`usable` only when it picks out one fact in the WHOLE document: no other fact, on any page, has
the same key (what the question names) with a different value (for a quantity: no other number
follows its clause anywhere), and a text answer occurs nowhere
else in the document's text (occurrences that follow the same label the question names, such as a
section number in the table of contents, are the same fact). `problem` says why a fact is not usable.
A section title that another page also prints after its number (a table of contents) is `listed`
there: a question about it can be answered from the contents page without finding the section.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from megatron_vlm.data.textlines import LEADERS

NUMBER_RE = re.compile(r"(?<![\w.,/\-])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d|,\d|/|\.\d)")
YEAR_RE = re.compile(r"^(1[89]|20)\d\d$")
BODY_KINDS = ("paragraph", "list", "table")
MIN_OCR_CONFIDENCE = 70.0  # mean character confidence (0-100) an OCRed page needs to give facts
REPEATED_PAGES = 3  # text on this many pages is a running header, footer or boilerplate, not a fact
MAX_CLAUSE_WORDS = 30
MAX_CAPTION_CHARS = 300  # a text block that starts "Table 3:" and is no longer than this is a caption
MAX_NAME_CHARS = 40  # a column name is at most this long ...
MAX_NAME_CJK = 12  # ... and has at most this many CJK characters

# Units a number can carry; the phrase a question asks with.
UNITS = {
    "%": "what percentage", "percent": "what percentage", "per cent": "what percentage", "°C": "how many °C",
}
MEASURE_UNITS = (
    "pt", "mm", "cm", "m", "km", "px", "dpi", "em", "ex", "bp", "pc", "ms", "s", "min", "h", "kg", "g", "mg",
    "Hz", "kHz", "MHz", "GHz", "KB", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "bit", "bits", "bytes", "V", "W",
    "kW", "°C", "K", "USD", "EUR",
)
NOT_NOUNS = {
    "is", "was", "has", "does", "this", "thus", "as", "its", "his", "hers", "yes", "less", "plus", "minus", "always",
    "sometimes", "towards", "whereas", "besides", "across", "unless", "perhaps", "various", "previous", "obvious",
    "us", "ones", "others",
}
STOPWORDS = set(
    "a an the of in on at to for from by with and or is are was were be been as that this these those it its "
    "what which who how many much does do did than then into per there their our your we you they he she".split()
)
ENGLISH_WORDS = set("the of and to is are was were with that this by from which has have on for each all at it be as we our its their these those".split())
NOT_BEFORE_NUMBER = set("the a an this that these those type each every its their our his her version release".split())
PREPOSITIONS = set("of in on at for from per to with within across over under during between among into".split())
CLAUSE_ENDS = set("but and or which that while where when because although so if as whereas".split())
VERBS_AFTER = set("is are was were be been has have had can will may must should would could do does did".split())
LOWER_FIRST = STOPWORDS | set("we our this each all every some most about only over after before during when while".split())
LABEL_RE = re.compile(r"^(Table|Tab\.|Tabelle|Tableau|Tabla|表)\s*(\d+(?:\.\d+)*)\s*[:.\-–—：]?\s*(.*)$", re.S)
CAPTION_RE = re.compile(r"^(Table|Tab\.|Tabelle|Tableau|Tabla|表|Figure|Fig\.|Abbildung|Abb\.|图|圖|Listing)\s*\d", re.I)
SECTION_RE = re.compile(r"^(?:(?:Section|Chapter|Part|Kapitel|Abschnitt|Chapitre)\s+)?(\d{1,2}(?:\.\d{1,2}){0,3})\.?(?::\s*|\s+)(\S.*)$")
REFERENCE_WORDS = re.compile(
    r"(?:\b(?:table|tab|figure|fig|section|sec|chapter|eq|equation|page|pages|p|pp|appendix|version|v|no|ref|step|item|line|lines|vol|volume|seite|kapitel|abschnitt|abb|tabelle)\.?|[§#\[(])\s*$",
    re.I,
)


def normalize(text: str) -> str:
    """Casefold, whitespace collapsed, table bars dropped, thousands separators removed ("4,312" -> "4312")."""
    text = " ".join(text.casefold().replace("|", " ").split())
    return re.sub(r"(?<=\d),(?=\d{3})", "", text)


def mask_digits(text: str) -> str:
    return re.sub(r"\d+", "#", normalize(text))


def parse_number(text: str) -> float | None:
    """'4,312' -> 4312.0, '$1.5' -> 1.5, '12%' -> 12.0, '−3' -> -3.0; None when the text is not one number."""
    t = text.strip().replace(",", "").replace("$", "").replace("\u2212", "-").rstrip("%").strip()
    try:
        return float(t)
    except ValueError:
        return None


def number_format(text: str) -> str:
    if parse_number(text) is None:
        return "Str"
    return "Float" if "." in text else "Int"


def is_measure(unit: str) -> bool:
    """A unit of measure (pt, ms, %, ...), not a counted noun ("participants")."""
    return unit in UNITS or unit in MEASURE_UNITS


def unit_of(text: str) -> str:
    """The unit suffix that makes numbers comparable: '%' for '12%', '' for '12'."""
    return "%" if text.strip().endswith("%") else ""


@dataclass(frozen=True)
class Fact:
    kind: str  # "cell" | "quantity" | "section"
    page: int
    value: str  # the answer, as printed
    anchors: tuple[str, ...]  # what a question must name, as printed (table/section, row, column | section, clause, unit | number)
    section: str = ""  # title of the section the fact is in
    table: str = ""  # cell: how the question names its table ('Table 3 ("Revenue by region")')
    table_id: tuple = ()  # cell: (first page, index): cells with the same id and column are comparable
    row: str = ""
    column: str = ""
    unit: str = ""  # quantity: unit or counted noun; cell: "%" or ""
    clause: str = ""  # quantity: the clause with the number replaced by the question phrase
    problem: str | None = field(default=None, compare=False)  # why no question may ask for it
    listed: tuple[int, ...] = field(default=(), compare=False)  # section: other pages printing "number title" (contents)

    @property
    def key(self) -> tuple:
        """What a question names, normalised: two facts with one key and two values make it ambiguous."""
        return (self.kind, *(normalize(a) for a in self.anchors))

    def ask(self) -> str:
        """The extract-single question for this fact (no page number: the model must find it)."""
        if self.kind == "cell":
            return f'In {self.table}, what is the value in the column "{self.column}" for the row "{self.row}"?'
        if self.kind == "quantity":
            return f"{self.where()}, {self.clause}?"
        return f"What is the title of section {self.anchors[0]}?"

    def where(self) -> str:
        """'According to the section "..."' (or 'According to the document' before any section)."""
        return f'According to the section "{self.section}"' if self.section else "According to the document"

    def describe(self) -> str:
        """One sentence saying where the answer is printed, for evidence_description."""
        if self.kind == "cell":
            return f'{self.table[0].upper()}{self.table[1:]}, row "{self.row}", column "{self.column}": {self.value}.'
        if self.kind == "quantity":
            place = f'section "{self.section}"' if self.section else "the text"
            unit = "" if self.unit == "%" else f" {self.unit}"
            return f'In {place}: "{self.anchors[1]} {self.value}{unit}".'
        return f'The heading of section {self.anchors[0]} reads "{self.anchors[0]} {self.value}".'


def page_problem(page: dict) -> str | None:
    """Why a page's text must not give facts, or None: a broken text layer, no text, or OCR whose
    page confidence (0-100, the pool's `ocr_confidence`) is unknown or below MIN_OCR_CONFIDENCE."""
    quality = page.get("text_quality")
    if quality in ("broken", "none"):
        return f"text layer {quality}"
    if page.get("ocr") == "missing":
        return "not OCRed"
    if page.get("ocr") not in (None, "none"):
        confidence = page.get("ocr_confidence")
        if confidence is None:
            return "OCR confidence unknown"
        if confidence < MIN_OCR_CONFIDENCE:
            return "OCR confidence low"
    return None


def block_usable(block: dict) -> bool:
    """A body block (paragraph, list, table) whose text is not marked low confidence."""
    return block["kind"] in BODY_KINDS and not block.get("low_confidence")


def repeated_texts(doc: dict) -> set[str]:
    """Texts (normalised) on REPEATED_PAGES or more pages: running headers, footers, boilerplate.

    A line counts as repeated when its exact text recurs, or, in the top or bottom margin
    (12% of the page), when it recurs with its digits masked ("Page 3 of 9"). Both forms are in
    the set: exact texts as they are, masked ones with their digits as "#"."""
    exact: dict[str, set[int]] = defaultdict(set)
    masked: dict[str, set[int]] = defaultdict(set)
    for page in doc["pages"]:
        height = page.get("height_pt") or 0
        for block in page["blocks"]:
            y0, y1 = (block.get("bbox") or [0, 0, 0, 0])[1::2]
            margin = bool(height) and (y1 < 0.12 * height or y0 > 0.88 * height)
            for line in block["text"].splitlines() or [block["text"]]:
                exact[normalize(line)].add(page["index"])
                if margin:
                    masked[mask_digits(line)].add(page["index"])
    return {t for table in (exact, masked) for t, pages in table.items() if t and len(pages) >= REPEATED_PAGES}


def is_repeated(text: str, repeated: set[str]) -> bool:
    return normalize(text) in repeated or mask_digits(text) in repeated


def section_number(heading: str) -> tuple[str, str] | None:
    """('2.1', 'Template Styles') for a numbered section heading, else None."""
    m = SECTION_RE.match(" ".join(heading.split()))
    if not m or int(m[1].split(".")[0]) == 0:
        return None
    title = m[2].strip()
    if not _is_title(title) or re.search(r"\s\d+$|[。！？]", title) or len(title) > 80:
        return None  # a table-of-contents line (title and page number), or a sentence
    return m[1], title


def column_names(header_rows: list[list[str]]) -> list[str]:
    """One name per column from a table's header rows: its non-empty header cells, top to bottom
    ("Accuracy" over "Top-1" -> "Accuracy Top-1"); [] without header rows."""
    width = max((len(r) for r in header_rows), default=0)
    names = []
    for c in range(width):
        parts = [r[c] for r in header_rows if c < len(r) and r[c]]
        names.append(" ".join(dict.fromkeys(parts)))
    return names


def is_caption(block: dict) -> bool:
    """A caption block, or a short text block that reads like one ("Table 42: ...", which the
    layout model sometimes calls text)."""
    return block["kind"] == "caption" or (block["kind"] == "paragraph" and len(block["text"]) <= MAX_CAPTION_CHARS
                                           and CAPTION_RE.match(block["text"].strip()) is not None)


def is_column_name(text: str) -> bool:
    """Whether a header cell reads as a column's name: not a number (a year is a name: "2023"), a
    sentence (ends in . or 。), code (backslash, braces), a piece of a list running on into the next
    cell (ends in a comma, or its brackets do not pair up: "R/3 4.6C, R/3 6.10)") or longer than a
    name (MAX_NAME_CHARS, or MAX_NAME_CJK CJK characters)."""
    text = text.strip()
    return not ((parse_number(text) is not None and not YEAR_RE.match(text)) or text.endswith((".", "。", "!", "?", ",", "，", ";"))
                or re.search(r"[\\{}]", text) or text.count("(") != text.count(")") or text.count("[") != text.count("]")
                or len(text) > MAX_NAME_CHARS or len(CJK.findall(text)) > MAX_NAME_CJK)


def header_reads_as_data(header: list[str], body: list[list[str]]) -> bool:
    """Whether a table's header row is one more data row: in some column, the header cell's first
    word opens half the body cells or more (a list of examples "Dru"cker | ergibt: Drucker", "Ro"lladen |
    ergibt: Rolladen", ... whose first example was taken for the header)."""
    for c, name in enumerate(header):
        first = name.split()[0] if name.split() else ""
        if not re.search(r"[^\W\d_]", first):
            continue
        column = [row[c].split()[0] for row in body if c < len(row) and row[c].split()]
        if len(column) >= 2 and 2 * sum(word == first for word in column) >= len(column):
            return True
    return False


def _label(m: re.Match) -> str:
    """A caption's label as the document writes it: "Table 3", "表3" (no space before a CJK label's number)."""
    return f"{m[1]}{m[2]}" if CJK.match(m[1]) else f"{m[1]} {m[2]}"


def _is_title(text: str) -> bool:
    words = text.split()
    return 1 <= len(words) <= 15 and bool(re.search(r"[^\W\d_]{3}", text)) and not LEADERS.search(text)


class _Walk:
    """One pass over the document in reading order, collecting raw facts with their context."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.repeated = repeated_texts(doc)
        self.facts: list[Fact] = []
        self.section = ""
        labels = Counter()
        for page in doc["pages"]:
            for block in page["blocks"]:
                if is_caption(block) and (m := LABEL_RE.match(block["text"].strip())):
                    labels[_label(m)] += 1
        self.unique_labels = {label for label, n in labels.items() if n == 1}
        self.last_table: tuple | None = None  # (column names, table id, caption) of the previous page's last table

    def run(self) -> list[Fact]:
        for page in self.doc["pages"]:
            problem = page_problem(page)
            blocks = page["blocks"]
            tables_here = 0
            prev_last, self.last_table = self.last_table, None
            for i, block in enumerate(blocks):
                text = block["text"].strip()
                if is_repeated(text, self.repeated):
                    continue
                if block["kind"] == "heading":
                    if problem is None and _is_title(text):
                        self.section = " ".join(text.split())
                        if sec := section_number(text):
                            self.facts.append(Fact("section", page["index"], sec[1], (sec[0],), section=self.section))
                    continue
                if problem is not None or not block_usable(block):
                    continue
                if block["kind"] == "table":
                    cells = [[" ".join(c.split()) for c in row] for row in block.get("cells") or []]
                    n_head = block.get("header_rows", 1)  # pools before header_rows: the first row
                    header = column_names(cells[:n_head])
                    table_id, caption = (page["index"], tables_here), self._caption(blocks, i)
                    if "continued_from" in block:
                        continued = block["continued_from"] is not None and tables_here == 0
                    else:  # pools before continued_from: the first table repeats the last one's header
                        continued = tables_here == 0 and not caption and prev_last is not None and prev_last[0] == header
                    if continued and prev_last:
                        table_id, caption = prev_last[1], caption or prev_last[2]  # the same table, named as before
                    self._cells(page["index"], header, cells[n_head:], caption, table_id)
                    self.last_table = (header, table_id, caption)
                    tables_here += 1
                elif not CAPTION_RE.match(text):
                    for line in (text.splitlines() if block["kind"] == "list" else [text]):
                        self._quantities(page["index"], line)
        return self.facts

    @staticmethod
    def _caption(blocks: list[dict], i: int) -> str:
        """The table caption next to block i (the nearest caption above, else the one just below)."""
        for j in list(range(i - 1, max(i - 4, -1), -1)) + [i + 1]:
            if 0 <= j < len(blocks) and is_caption(blocks[j]) and LABEL_RE.match(blocks[j]["text"].strip()):
                return " ".join(blocks[j]["text"].split())
        return ""

    def _table_name(self, caption: str, header: list[str]) -> tuple[str, str]:
        """(how a question names the table, the anchor that identifies it in the key)."""
        m = LABEL_RE.match(caption)
        if m and _label(m) in self.unique_labels:
            label, title = _label(m), m[3].strip().rstrip(".")
            return (f'{label} ("{title}")' if title else label), label
        shown = [h for h in header if h]
        cols = ", ".join(f'"{h}"' for h in shown[:4]) + (", …" if len(shown) > 4 else "")
        name = f"the table with the columns {cols}"
        if self.section:
            name += f' in the section "{self.section}"'
        return name, self.section

    def _cells(self, page: int, header: list[str], body: list[list[str]], caption: str, table_id: tuple) -> None:
        if len(body) < 2 or len(header) < 2:
            return
        if any(LEADERS.search(h) or "__" in h for h in header):
            return  # an index or table of contents set as a table, not a table of facts
        if not all(is_column_name(h) for h in header if h) or header_reads_as_data(header, body):
            return  # its first row is data (a list of options and what they do, examples) or code, not column names
        name, anchor = self._table_name(caption, header)
        labels = Counter(row[0] for row in body if row)
        for row in body:
            if len(row) < 2 or not re.search(r"[^\W\d_]", row[0]) or labels[row[0]] != 1 or LEADERS.search(row[0]) or "__" in row[0]:
                continue  # an unlabelled or repeated row cannot be named
            for c in range(1, min(len(row), len(header))):
                col, value = header[c], row[c]
                if not re.search(r"\w", value) or not col or header.count(col) != 1 or normalize(value) in (normalize(col), normalize(row[0])):
                    continue
                if len(value) > 60 or is_repeated(value, self.repeated):
                    continue
                self.facts.append(Fact("cell", page, value, (anchor, row[0], col), section=self.section, table=name,
                                       table_id=table_id, row=row[0], column=col, unit=unit_of(value)))

    def _quantities(self, page: int, text: str) -> None:
        text = " ".join(text.split())
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])|;\s+", text):
            if not _is_prose(sentence):
                continue
            for m in NUMBER_RE.finditer(sentence):
                fact = self._quantity(page, sentence, m)
                if fact:
                    self.facts.append(fact)

    def _quantity(self, page: int, sentence: str, m: re.Match) -> Fact | None:
        number = m[0]
        if YEAR_RE.match(number) or REFERENCE_WORDS.search(sentence[: m.start()]) or sentence[: m.start()].endswith(("$", "€", "£")):
            return None
        after = sentence[m.end():]
        um = re.match(r"(\s?)(%|per ?cent\b|°C|[A-Za-zµ]+\b)", after)
        if not um:
            return None
        unit = um[2]
        if unit in UNITS:
            phrase = UNITS[unit]
        elif unit in MEASURE_UNITS:
            phrase = f"how many {unit}"
        elif um[1] and len(unit) >= 3 and unit.islower() and unit.endswith("s") and not unit.endswith("ss") and unit not in NOT_NOUNS:
            phrase = f"how many {unit}"
        else:
            return None
        # The clause around the number: from the last comma/colon before it (or the sentence start)
        # to the unit, plus a prepositional phrase after it ("on the test set"). The number must be
        # the clause's object ("was 12 ms", "recruited 24 participants"), not part of a name
        # ("REVTeX 4 sets") or of a subject ("the type 2 rules are").
        cuts = [sentence.rfind(sep, 0, m.start()) + len(sep) for sep in (", ", ": ", "(") if sep in sentence[: m.start()]]
        start = max(cuts, default=0)
        before = sentence[start: m.start()].strip()
        while before.split() and before.split()[0].casefold() in CLAUSE_ENDS:  # "where the width is": the clause, not its link
            before = before.split(maxsplit=1)[1] if len(before.split()) > 1 else ""
        if len(before.split()) < (3 if start else 2):
            return None
        previous = before.split()[-1]
        if not previous.islower() or previous in NOT_BEFORE_NUMBER:
            return None
        tail = re.match(r"[^,.;:()!?]*", after[um.end():])[0].split()[:8]
        if tail and tail[0].casefold() not in PREPOSITIONS:
            if tail[0].casefold() in VERBS_AFTER:
                return None
            tail = []
        for i, word in enumerate(tail):
            if word.casefold() in CLAUSE_ENDS:
                tail = tail[:i]  # the phrase ends where a new clause begins
                break
        while tail and tail[-1].casefold() in STOPWORDS:
            tail.pop()
        tail_text = " ".join(tail)
        words = before.split() + tail
        content = [w for w in re.findall(r"[^\W\d_]{3,}", " ".join(words)) if w.casefold() not in STOPWORDS]
        if len(content) < 3 or len(before.split()) + len(tail) + 2 > MAX_CLAUSE_WORDS:
            return None
        if NUMBER_RE.search(before) and YEAR_RE.match(NUMBER_RE.search(before)[0]) is None:
            return None  # another number in the same clause: the question would not say which
        first = before.split()[0]
        lead = before[0].lower() + before[1:] if first.casefold() in LOWER_FIRST and first.istitle() else before
        clause = f"{lead} {phrase}" + (f" {tail_text}" if tail_text else "")
        value = number + ("%" if unit == "%" else "")
        return Fact("quantity", page, value, (self.section, before, unit), section=self.section, unit=unit, clause=clause)


def _is_prose(sentence: str) -> bool:
    """An English sentence of running text (the template's questions are English), not code or a list of numbers."""
    words = sentence.split()
    if len(ENGLISH_WORDS & {w.casefold() for w in words}) < 2:
        return False
    if not 6 <= len(words) <= 80 or re.search(r"[\\{}=<>_^~]|\.\s?\.\s?\.|https?:|@", sentence):
        return False
    wordy = sum(bool(re.fullmatch(r"[^\W\d_]{2,}[,.;:!?)]*", w)) for w in words)
    return wordy >= 0.6 * len(words)


def document_facts(doc: dict) -> list[Fact]:
    """Every fact of the document in reading order; `problem` is None for the usable ones."""
    raw = _Walk(doc).run()
    values_of: dict[tuple, set[str]] = defaultdict(set)
    for f in raw:
        values_of[f.key].add(normalize(f.value))
    pages = page_texts(doc)
    text = doc_text(doc, pages)
    facts = []
    for f in raw:
        problem = None
        if SPACING_ACCENT.search(f.value) or any(SPACING_ACCENT.search(a) for a in f.anchors):
            problem = "broken text (a spacing accent where a letter belongs)"
        elif len(values_of[f.key]) > 1 or (f.kind == "quantity" and len(clause_numbers(f.anchors[1], text)) > 1):
            problem = "another fact in the document has the same name and a different value"
        elif parse_number(f.value) is None and not occurs_once(f.value, text, f.anchors):
            problem = "the answer text occurs elsewhere in the document"
        listed = listed_pages(f, pages) if f.kind == "section" and problem is None else ()
        facts.append(replace(f, problem=problem, listed=listed))
    return facts


def listed_pages(f: Fact, page_texts: dict[int, str]) -> tuple[int, ...]:
    """Pages other than the section's own that print its number and title together (a table of
    contents, a cross-reference list), from normalised page texts by page index."""
    pattern = re.compile(word_pattern(normalize(f"{f.anchors[0]} {f.value}")))
    return tuple(i for i, t in sorted(page_texts.items()) if i != f.page and pattern.search(t))


def clause_numbers(clause: str, text: str) -> set[str]:
    """The numbers that follow `clause` anywhere in the normalised document text: "the student will
    get" 0 point, 1 point, 2 points (a singular unit is no quantity fact, yet makes "how many
    points" ambiguous)."""
    return {m[1] for m in re.finditer(word_pattern(normalize(clause)) + r"\s*(\d+(?:\.\d+)?)", text)}


def page_texts(doc: dict) -> dict[int, str]:
    """Each page's text, normalised, by page index."""
    return {p["index"]: normalize(p["text"]) for p in doc["pages"]}


def doc_text(doc: dict, pages: dict[int, str] | None = None) -> str:
    """The whole document's text, normalised (what uniqueness of a text answer is checked against);
    ``pages``: its page_texts when already made."""
    return " \n ".join((page_texts(doc) if pages is None else pages).values())


SPACING_ACCENT = re.compile(r"[\u00a8\u00b4\u02c6\u02c7\u02d8\u02d9\u02da\u02db\u02dc\u02dd\u00b8]\s?[^\W\d_]")  # "¨A" for "Ä"
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def word_pattern(needle: str, after: str = r"(?!\w)") -> str:
    """A regex for `needle` as whole words; an end in a CJK character needs no boundary there
    (CJK text has no spaces between words)."""
    before = "" if CJK.match(needle[:1]) else r"(?<!\w)"
    return before + re.escape(needle) + ("" if CJK.match(needle[-1:]) else after)


def occurs_once(answer: str, text: str, names: tuple[str, ...] | str = ()) -> bool:
    """True when `answer` occurs once in `text` (normalised, whole words), or every occurrence
    follows the same word and that word is among `names` (the label the question names)."""
    needle = normalize(answer)
    if not needle:
        return False
    hits = [m.start() for m in re.finditer(word_pattern(needle), text)]
    if len(hits) == 1:
        return True
    if not hits:
        return False
    before = {(re.findall(r"\S+", text[max(0, h - 40): h]) or [""])[-1] for h in hits}
    named = normalize(" ".join(names) if isinstance(names, tuple) else names).split()
    return len(before) == 1 and next(iter(before)) in named


class FactCache:
    """document_facts, doc_text and repeated_texts of the last few documents, by id (the teacher
    and the validator look at one document many times)."""

    def __init__(self, size: int = 4):
        self.size, self._entries = size, {}

    def _entry(self, doc: dict) -> tuple[list[Fact], str, set[str]]:
        key = doc["id"]
        if key not in self._entries:
            if len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (document_facts(doc), doc_text(doc), repeated_texts(doc))
        return self._entries[key]

    def facts(self, doc: dict) -> list[Fact]:
        return self._entry(doc)[0]

    def text(self, doc: dict) -> str:
        return self._entry(doc)[1]

    def repeated(self, doc: dict) -> set[str]:
        return self._entry(doc)[2]
