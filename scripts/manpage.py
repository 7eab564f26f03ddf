"""Manual pages (roff source with the man(7) macros) rendered to plain text, with the standard library only.

Used by ``scripts/debian_text.py``. :func:`render` turns a page's roff source into a :class:`Page`: its
name and section (from ``.TH``, which is not part of the text) and a list of :class:`Block` s
(headings, paragraphs, option tags and the paragraphs they describe), each with its character offset in
``Page.text`` (the blocks joined by blank lines), so an answer span found in a block is a span of the
text.

What is handled (and what is dropped):

* requests: ``.TH`` (name, section), ``.SH``/``.SS`` (headings; with no argument the next line),
  ``.PP .LP .P .HP .sp`` (new paragraph), ``.br`` (line break), ``.TP``/``.TQ`` (the next line is a tag;
  ``.TQ`` adds another tag to it), ``.IP tag`` (a tag unless it is a bullet), ``.RS``/``.RE`` (a
  new block; a one-line paragraph just before ``.RS`` is a tag: DocBook's and Asciidoctor's lists), ``.B .I .SM .SB`` (their
  arguments joined by spaces), ``.BR .BI .IB .IR .RB .RI`` (joined without spaces), ``.nf/.fi`` and
  ``.EX/.EE`` (no-fill: lines kept), ``.UR/.UE .MT/.ME`` (the link text), ``.SY/.OP/.YS`` (synopses),
  ``.TS … .TE`` (tbl: the format lines dropped, each row a line), ``.ds`` (strings, expanded by
  ``\\*``); ``.de/.ig … ..``, ``.EQ … .EN``, conditionals (``.if/.ie/.el``, with their ``\\{ … \\}``
  blocks) and every other request are dropped;
* escapes: fonts and sizes removed, ``\\-`` → ``-``, ``\\(xx``/``\\[name]`` glyphs to Unicode (unknown → ``""``),
  ``\\[uXXXX]``, strings, spacing escapes to a space, comments ``\\"`` and ``\\#`` removed, motions and
  registers removed;
* a page that is only ``.so other-page`` is a link (:attr:`Page.link`); mdoc(7) pages (``.Dd``/``.Dt``) are
  not rendered (:class:`UnsupportedPage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Block", "Page", "UnsupportedPage", "render", "expand_escapes", "split_args", "option_of", "first_sentence"]

GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "aq": "'", "dq": '"', "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "ti": "~", "ha": "^", "ga": "`", "ul": "_", "ru": "_", "bv": "|", "ba": "|",
    "co": "©", "rg": "®", "tm": "™", "sc": "§", "de": "°", "+-": "±", "mu": "×", "di": "÷", "->": "→",
    "<-": "←", ">=": "≥", "<=": "≤", "!=": "≠", "==": "≡", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›",
    "dg": "†", "dd": "‡", "sl": "/", "rs": "\\", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨",
    "ra": "⟩", "aa": "´", "a-": "¯", "Do": "$", "Eu": "€", "Po": "£", "ct": "¢", "ss": "ß", "pc": "·",
    "mc": "µ", "no": "¬", "or": "|", "ca": "∩", "cu": "∪", "if": "∞", "sq": "□", "ci": "○", "OK": "✓",
}
STRINGS = {"lq": '"', "rq": '"', "R": "®", "Tm": "™", "Aq": "'", "Lq": '"', "Rq": '"', "L\"": '"', "R\"": '"'}
_ESCAPE = re.compile(
    r"\\(?:"
    r"\((?P<g2>..)|\[(?P<gb>[^\]]*)\]"                      # glyphs \(xx \[name]
    r"|\*(?:\((?P<s2>..)|\[(?P<sb>[^\]]*)\]|(?P<s1>.))"      # strings \*x \*(xx \*[name]
    r"|f(?:\(..|\[[^\]]*\]|.)"                              # fonts
    r"|s(?:[+-]?\d{1,2}|\(\d\d|[+-]?\[[^\]]*\]|'[^']*')"     # sizes
    r"|[nmgFMVY][+-]?(?:\(..|\[[^\]]*\]|.)"                  # registers, colours
    r"|[hvwlLDoXZNRbxSBCAIj](?P<q>['|])(?P<arg>.*?)(?P=q)"   # delimited escapes (\w'…' etc.)
    r"|k."                                                  # mark
    r"|\$(?:\d|\*|@|\[[^\]]*\])"                            # macro arguments
    r"|(?P<one>.)"                                          # single-character escapes
    r")",
    re.S,
)
_ONE = {"-": "-", "e": "\\", "\\": "\\", "&": "", "|": "", "^": "", "~": " ", " ": " ", "0": " ", "c": "",
        "%": "", ":": "", "/": "", ",": "", "'": "'", "`": "`", ".": ".", "t": " ", "{": "", "}": "", "z": "",
        "p": "", "r": "", "u": "", "d": "", "a": "", "E": "", "!": "", "?": "", ")": ""}
_PARAGRAPH = {"PP", "LP", "P", "HP", "sp", "ns", "PD"}
_ONE_FONT = {"B", "I", "SM", "SB"}
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}


class UnsupportedPage(ValueError):
    """A page in a macro package other than man(7) (mdoc), or with no text."""


@dataclass
class Block:
    """One rendered unit: ``kind`` is ``heading``, ``para``, ``tag`` (an option/term of a ``.TP``/``.IP``)
    or ``item`` (the paragraph a tag describes); ``heading`` is the enclosing ``.SH`` heading;
    ``start`` its offset in :attr:`Page.text`."""

    kind: str
    text: str
    heading: str = ""
    start: int = -1


@dataclass
class Page:
    name: str = ""
    section: str = ""
    blocks: list[Block] = field(default_factory=list)
    link: str | None = None  # the target of a ``.so`` page

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)


def expand_escapes(s: str, strings: dict[str, str] | None = None) -> str:
    """Text of one roff line with every escape resolved (see the module docstring)."""
    strings = STRINGS if strings is None else strings

    def sub(m: re.Match) -> str:
        if m.group("g2") is not None:
            return GLYPHS.get(m.group("g2"), "")
        gb = m.group("gb")
        if gb is not None:
            if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", gb):
                return chr(int(gb[1:], 16))
            return GLYPHS.get(gb, "")
        for g in ("s2", "sb", "s1"):
            if m.group(g) is not None:
                return strings.get(m.group(g), "")
        if m.group("one") is not None:
            return _ONE.get(m.group("one"), m.group("one"))
        if m.group(0)[1] in "Z":  # zero-width text: keep the text
            return expand_escapes(m.group("arg") or "", strings)
        return ""

    return _ESCAPE.sub(sub, s)


def split_args(s: str) -> list[str]:
    """A request's arguments: space-separated, ``"…"`` quoted (``""`` inside quotes is a quote)."""
    args, i, n = [], 0, len(s)
    while i < n:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            break
        if s[i] == '"':
            i += 1
            buf = []
            while i < n:
                if s[i] == '"':
                    if i + 1 < n and s[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(s[i])
                i += 1
            args.append("".join(buf))
        else:
            j = i
            while j < n and s[j] not in " \t":
                j += 1 + (s[j] == "\\")
            args.append(s[i:j])
            i = j
    return args


def _strip_comment(line: str) -> str:
    m = re.search(r'(?<!\\)(?:\\\\)*\\["#]', line)
    return line[: m.start() + len(m.group(0)) - 2] if m else line


def _logical_lines(src: str) -> list[str]:
    src = src.replace("\r\n", "\n")
    src = re.sub(r"(?<!\\)((?:\\\\)*)\\\n", r"\1", src)  # an escaped newline continues the line
    return src.split("\n")


class _Renderer:
    def __init__(self) -> None:
        self.page = Page()
        self.strings = dict(STRINGS)
        self.heading = ""
        self.buf: list[str] = []
        self.kind = "para"
        self.nofill = False
        self.pending_heading = False
        self.pending_tag = 0  # 1: the next line is a tag; 2: a tag added to the previous one (.TQ)
        self.skip_until: str | None = None
        self.brace_depth = 0
        self.table = 0  # 0: no table; 1: tbl options/format; 2: tbl data

    def flush(self, next_kind: str = "para") -> None:
        text = "\n".join(x.strip() for x in "".join(self.buf).split("\n"))
        text = re.sub(r"[ \t]+", " ", text).strip() if not self.nofill else text.strip("\n")
        if text.strip():
            self.page.blocks.append(Block(self.kind, text, self.heading))
        self.buf, self.kind = [], next_kind

    def add_text(self, text: str) -> None:
        if self.pending_heading:
            self.heading = text.strip()
            self.page.blocks.append(Block("heading", self.heading, self.heading))
            self.pending_heading = False
            return
        if self.pending_tag:
            tq = self.pending_tag == 2 and self.page.blocks and self.page.blocks[-1].kind == "tag"
            self.flush()
            if tq:
                self.page.blocks[-1].text += ", " + text.strip()
            elif text.strip():
                self.page.blocks.append(Block("tag", re.sub(r"\s+", " ", text).strip(), self.heading))
            self.pending_tag, self.kind = 0, "item"
            return
        if self.buf and not self.buf[-1].endswith("\n"):
            self.buf.append("\n" if self.nofill else " ")
        self.buf.append(text)

    def request(self, name: str, rest: str) -> None:
        args = [expand_escapes(a, self.strings) for a in split_args(rest)]
        if name == "TH":
            self.page.name = args[0] if args else ""
            self.page.section = args[1] if len(args) > 1 else ""
        elif name in ("SH", "SS"):
            self.flush()
            self.pending_tag = 0
            if args:
                self.heading = " ".join(args).strip()
                self.page.blocks.append(Block("heading", self.heading, self.heading))
            else:
                self.pending_heading = True
        elif name in _PARAGRAPH:
            self.flush()
        elif name == "br":
            if self.buf:
                self.buf.append("\n")
        elif name in ("TP", "TQ"):
            self.flush()
            self.pending_tag = 2 if name == "TQ" else 1
        elif name == "IP":
            self.flush()
            tag = args[0].strip() if args else ""
            if tag and tag not in ("•", "-", "*", "o", "·"):
                self.page.blocks.append(Block("tag", tag, self.heading))
                self.kind = "item"
        elif name in _ONE_FONT:
            if args:
                self.add_text(" ".join(args))
        elif name in _ALTERNATING:
            self.add_text("".join(args))
        elif name in ("nf", "EX"):
            self.flush()
            self.nofill = True
        elif name in ("fi", "EE"):
            self.flush()
            self.nofill = False
        elif name in ("UE", "ME"):
            if args:
                self.buf.append(args[0])
        elif name == "SY":
            self.flush()
            self.add_text(" ".join(args))
        elif name == "OP":
            self.add_text("[" + " ".join(args) + "]")
        elif name == "YS":
            self.flush()
        elif name == "RS":  # DocBook/Asciidoctor lists: a term line, then its description indented
            term = "".join(self.buf).strip()
            if self.kind == "para" and term and "\n" not in term and len(term) <= 80:
                self.buf = []
                self.page.blocks.append(Block("tag", re.sub(r"\s+", " ", term), self.heading))
                self.kind = "item"
            else:
                self.flush()
        elif name == "RE":
            self.flush()
        elif name == "TS":
            self.flush()
            self.table, self.nofill = 1, True
        elif name == "TE":
            self.flush()
            self.table, self.nofill = 0, False
        elif name == "ds" and args:
            value = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
            self.strings[args[0]] = expand_escapes(value[1:] if value.startswith('"') else value, self.strings)
        elif name in ("de", "de1", "am", "ig"):
            self.skip_until = ".." if len(args) < 2 or name != "ig" else "." + args[1]
        elif name == "EQ":
            self.skip_until = ".EN"
        # every other request (.RS .RE .in .ti .ad .na .hy .nh .ft .ps .ne .bp .nr .so .TS-less tables …) is dropped

    def line(self, raw: str) -> None:
        if self.skip_until is not None:
            if raw.strip().startswith(self.skip_until):
                self.skip_until = None
            return
        if self.brace_depth:
            self.brace_depth += raw.count("\\{") - raw.count("\\}")
            self.brace_depth = max(self.brace_depth, 0)
            return
        line = _strip_comment(raw)
        if line[:1] in (".", "'"):
            m = re.match(r"[.'][ \t]*(\S*)[ \t]*(.*)", line)
            name, rest = m.group(1), m.group(2)
            if name in ("if", "ie", "el", "while"):
                self.brace_depth = max(line.count("\\{") - line.count("\\}"), 0)
                return
            if self.table == 1:
                self.table = 2
            self.request(name, rest)
            return
        if self.table == 1:  # tbl options (…;) and format lines (… .)
            if line.rstrip().endswith("."):
                self.table = 2
            return
        if self.table == 2:
            line = re.sub(r"T[{}]", "", line).replace("\t", " ")
            if line.strip() in ("_", "=", ""):
                return
        text = expand_escapes(line, self.strings)
        if not text.strip() and not self.nofill:
            self.flush()  # a blank line ends the paragraph
            return
        self.add_text(text)


def render(src: str) -> Page:
    """Render one page (see the module docstring); sets every block's offset in ``Page.text``."""
    lines = _logical_lines(src)
    heads = [ln for ln in lines if ln[:1] == "." and not ln.startswith('.\\"')][:20]
    if any(re.match(r"\.\s*(Dd|Dt|Sh)\b", ln) for ln in heads):
        raise UnsupportedPage("mdoc(7) page")
    if len(heads) <= 2 and any(re.match(r"\.so\s", ln) for ln in heads):
        page = Page()
        page.link = next(ln.split(None, 1)[1].strip() for ln in heads if re.match(r"\.so\s", ln))
        return page
    r = _Renderer()
    for ln in lines:
        r.line(ln)
    r.flush()
    page = r.page
    offset = 0
    for b in page.blocks:
        b.start = offset
        offset += len(b.text) + 2
    if not page.blocks:
        raise UnsupportedPage("no text")
    return page


_OPTION = re.compile(r"^(--?[A-Za-z0-9?@][\w.?@+-]*)")


def option_of(tag: str) -> str | None:
    """The first command-line option a ``.TP`` tag names (``-r, -R, --recursive`` → ``-r``), else None."""
    m = _OPTION.match(tag.strip())
    return m.group(1).rstrip(".,=") if m else None


_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|resp|no|Fig)\.|\.\.\.|\b[A-Za-z]\.)$")


def first_sentence(text: str, max_words: int = 50) -> str:
    """The first sentence of ``text`` (up to ``.``, ``!`` or ``?`` followed by whitespace or the end,
    not after an abbreviation like ``e.g.``), cut to ``max_words`` words; a prefix of ``text``."""
    for m in re.finditer(r"[.!?](?=\s|$)", text):
        candidate = text[: m.end()]
        if not _ABBREV.search(candidate):
            break
    else:
        candidate = text
    words = list(re.finditer(r"\S+", candidate))
    if len(words) > max_words:
        candidate = candidate[: words[max_words - 1].end()]
    return candidate.rstrip()
