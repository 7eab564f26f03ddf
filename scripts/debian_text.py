"""Real text that no one on the project wrote, offline: two tasks built from Debian's manual pages.

    python scripts/debian_text.py --out data/debian            # fetch, unpack, write the JSONL files
    python scripts/debian_text.py --out data/debian --offline  # rebuild from the .deb files already in OUT/debs

Needs only Python's standard library and a Debian mirror (``--mirror``, default http://deb.debian.org/debian,
suite ``--suite bookworm``): it reads ``dists/<suite>/main/binary-amd64/Packages.xz``, downloads each
package's .deb with ``urllib`` (checked against the index's SHA-256; kept in ``OUT/debs``), unpacks it
with its own ``ar`` reader and ``tarfile`` (data.tar.xz/gz/bz2), reads every ``usr/share/man/man<N>/*``
page (English only: translations live in ``usr/share/man/<lang>/``) and renders it with
``scripts/manpage.py`` (no ``man`` or ``groff`` needed).

Tasks (written under OUT; splits by a hash of the page's name without its section, so ``printf(1)`` and
``printf(3)`` land in the same split and no page's text is in two splits: sha256(name) mod 100 < 80 →
train, < 90 → validation, else test):

* ``section/{train,validation,test}.jsonl`` — **long-document classification**: ``text`` is the page
  rendered to plain text, ``label`` its manual section (1 user commands, 2 system calls, 3 library
  functions, 5 file formats, 8 administration commands), read from the directory the page lives in
  (``man3/`` → 3, including ``3ssl``-style subsections). The ``.TH`` line (which holds the section) is
  not rendered, and every ``<name>(<section>)`` mention of the page itself is removed, so the label is
  not given away in one token; what decides it is a few passages (a SYNOPSIS with ``#include`` or a
  command line, RETURN VALUE/ERRORS sections, a file format's description). ``.so`` link pages and
  duplicates (same name and section, or the same text) are dropped; pages under ``--min-words`` words are
  dropped; at most ``--max-per-label`` pages per section are kept (the smallest hashes), which bounds
  the imbalance from manpages-dev's section-3 pages. ``--omit-sections NAME SYNOPSIS`` leaves out the
  page sections that open most pages and nearly decide the label on their own, so that a model
  reading only the first tokens (or keeping the first M) has less to go on. Trains with the bring-your-own-data preset:
  ``retention train data=byo 'data.data_files={train: OUT/section/train.jsonl, …}'``.
* ``options/*.jsonl`` — **extractive QA**: for every option a section-1 or section-8 page describes in a
  ``.TP``/``.IP`` list (a tag starting with ``-``), the question "What does the <option> option of
  <command> do?" and as answer the first sentence of the option's description (at most 50 words), a
  span of the page's rendered text. At most ``--max-questions-per-page`` questions per page (the
  smallest hashes of the option). Two files per split: ``squad-<split>.jsonl`` in the SQuAD schema
  (``id, title, context, question, answers: {text: [...], answer_start: [...]}``; ``context[s:s+len(a)] == a``
  for every answer), and ``qasper-<split>.jsonl``, the same questions in QASPER's schema (one record per
  page; ``abstract`` the first paragraph, ``full_text`` the rest, so QASPER's context — abstract and
  paragraphs joined by blank lines — is the page text), which ``retention train data=qasper`` reads.

Sources and licences (each package's ``/usr/share/doc/<pkg>/copyright`` is copied to
``OUT/licences/<pkg>.copyright``, and ``OUT/sources.json`` lists package, version, file and SHA-256):
the pages are free software documentation, redistributable under their packages' licences — man-pages
(``manpages``, ``manpages-dev``: the Linux man-pages project's "verbatim" licence, GPL-2+ and BSD
variants, per page), GNU coreutils, findutils, grep, sed, tar, man-db (GPL-3+ / GPL-2+; pages from
help2man), util-linux (GPL-2+, some pages BSD/public domain), procps (GPL-2+/LGPL-2+), systemd
(LGPL-2.1+), iproute2 (GPL-2), e2fsprogs (GPL-2), OpenSSH (BSD-style), apt and dpkg (GPL-2+), git-man
(GPL-2), lvm2 (GPL-2 / LGPL-2.1), rsync (GPL-3+). docs/data.md summarises them.
"""

from __future__ import annotations

import argparse
import bz2
import collections
import gzip
import hashlib
import io
import json
import lzma
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

from manpage import UnsupportedPage, first_sentence, option_of, render

PACKAGES = ("manpages", "manpages-dev", "coreutils", "util-linux", "findutils", "grep", "sed", "tar", "procps",
            "openssh-client", "openssh-server", "systemd", "iproute2", "e2fsprogs", "apt", "dpkg", "git-man",
            "lvm2", "man-db", "rsync", "postfix", "passwd", "login", "openssl")
SECTIONS = ("1", "2", "3", "5", "8")
QA_SECTIONS = ("1", "8")
_MAN_PATH = re.compile(r"^(?:\./)?usr/share/man/man(\d)/([^/]+)$")


# ---------------------------------------------------------------------------- packages and .deb files
def parse_packages(text: str) -> dict[str, dict[str, str]]:
    """``Packages`` index stanzas by package name (first stanza wins): Version, Filename, SHA256, …"""
    out: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if "Package" in fields:
            out.setdefault(fields["Package"], fields)
    return out


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a .deb: debian-binary, control.tar.*, data.tar.*)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def deb_files(deb: bytes, wanted) -> dict[str, bytes]:
    """The regular files of a .deb's data archive whose path satisfies ``wanted(path)``."""
    members = ar_members(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise ValueError("no data.tar.* member in the .deb")
    raw = members[name]
    if name.endswith(".zst"):
        raise ValueError(f"{name}: zstd is not in Python's standard library (bookworm's main archive uses xz)")
    opener = {".xz": lzma.decompress, ".gz": gzip.decompress, ".bz2": bz2.decompress}.get(Path(name).suffix, bytes)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(opener(raw)), mode="r:") as tar:
        for m in tar:
            path = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile() and wanted(path):
                out[path] = tar.extractfile(m).read()
    return out


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def get_debs(packages, out: Path, mirror: str, suite: str, offline: bool) -> list[tuple[str, str, bytes]]:
    """(package, version, .deb bytes) for each package, downloaded once into ``out/debs``."""
    debs_dir = out / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    if offline:
        found = []
        for p in packages:
            hits = sorted(debs_dir.glob(f"{p}_*.deb"))
            if not hits:
                raise SystemExit(f"--offline: no {p}_*.deb in {debs_dir}")
            found.append((p, hits[-1].name.split("_")[1], hits[-1].read_bytes()))
        return found
    index = parse_packages(lzma.decompress(fetch(f"{mirror}/dists/{suite}/main/binary-amd64/Packages.xz")).decode())
    found = []
    for p in packages:
        if p not in index:
            raise SystemExit(f"package {p!r} is not in {suite}/main")
        meta = index[p]
        path = debs_dir / Path(meta["Filename"]).name
        data = path.read_bytes() if path.exists() else b""
        if hashlib.sha256(data).hexdigest() != meta["SHA256"]:
            data = fetch(f"{mirror}/{meta['Filename']}")
            if hashlib.sha256(data).hexdigest() != meta["SHA256"]:
                raise SystemExit(f"{meta['Filename']}: SHA-256 differs from the Packages index")
            path.write_bytes(data)
        found.append((p, meta["Version"], data))
    return found


# ---------------------------------------------------------------------------- pages → examples
def split_of(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def _rank(*parts: str) -> int:
    return int(hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12], 16)


def man_page(path: str, data: bytes) -> tuple[str, str, str] | None:
    """(name, section digit, roff source) of a ``usr/share/man/man<N>/`` page, else None."""
    m = _MAN_PATH.match(path)
    if not m or m.group(1) not in SECTIONS:
        return None
    raw = gzip.decompress(data) if m.group(2).endswith(".gz") else data
    stem = re.sub(r"\.gz$", "", m.group(2))
    name = stem.rsplit(".", 1)[0] if "." in stem else stem
    return name, m.group(1), raw.decode("utf-8", errors="replace")


def page_text(page, name: str, section: str, omit: tuple[str, ...] = ()) -> str:
    """The rendered text with the page's own ``name(section)`` mentions removed (see the module
    docstring), without the blocks under the headings in ``omit`` (compared upper-case)."""
    own = re.compile(rf"\b{re.escape(name)}\s*\({re.escape(section)}\w*\)", re.I)
    omit = tuple(h.upper() for h in omit)
    return own.sub(name, "\n\n".join(b.text for b in page.blocks if b.heading.upper() not in omit))


def qa_examples(page, name: str, package: str, max_questions: int) -> list[dict]:
    """SQuAD-style questions about ``name``'s options (see the module docstring); spans checked."""
    context, seen, out = page.text, set(), []
    for i, b in enumerate(page.blocks[:-1]):
        item = page.blocks[i + 1]
        opt = option_of(b.text) if b.kind == "tag" else None
        if not opt or item.kind != "item" or opt in seen:
            continue
        answer = first_sentence(item.text)
        if len(answer.split()) < 3:
            continue
        seen.add(opt)
        start = item.start
        if context[start:start + len(answer)] != answer:  # a renderer bug, not a property of the page
            raise ValueError(f"{name}: the answer for {opt} is not the text at offset {start}")
        out.append({"id": f"{name}:{opt}", "title": name, "package": package, "context": context,
                    "question": f"What does the {opt} option of {name} do?",
                    "answers": {"text": [answer], "answer_start": [start]}})
    out.sort(key=lambda e: _rank(e["id"]))
    return out[:max_questions]


def qasper_record(examples: list[dict]) -> dict:
    """One page's questions in QASPER's schema (context = abstract + paragraphs joined by blank lines)."""
    first, rest = examples[0]["context"].split("\n\n", 1) if "\n\n" in examples[0]["context"] else (examples[0]["context"], "")
    answers = [{"answer": [{"unanswerable": False, "extractive_spans": e["answers"]["text"], "yes_no": None,
                            "free_form_answer": "", "evidence": [], "highlighted_evidence": []}],
                "annotation_id": [e["id"]], "worker_id": ["debian_text.py"]} for e in examples]
    n = len(examples)
    return {"id": examples[0]["title"], "title": examples[0]["title"], "abstract": first,
            "full_text": {"section_name": [""], "paragraphs": [rest.split("\n\n") if rest else []]},
            "qas": {"question": [e["question"] for e in examples], "question_id": [e["id"] for e in examples],
                    "nlp_background": [""] * n, "topic_background": [""] * n, "paper_read": [""] * n,
                    "search_query": [""] * n, "question_writer": [""] * n, "answers": answers}}


def build(debs, args) -> dict:
    """Render every page, write both tasks and the sources; returns the counts printed at the end."""
    out = Path(args.out)
    (out / "licences").mkdir(parents=True, exist_ok=True)
    pages, stats, sources = {}, collections.Counter(), []
    for package, version, deb in debs:
        files = deb_files(deb, lambda p: bool(_MAN_PATH.match(p)) or p == f"usr/share/doc/{package}/copyright")
        if f"usr/share/doc/{package}/copyright" in files:
            (out / "licences" / f"{package}.copyright").write_bytes(files[f"usr/share/doc/{package}/copyright"])
        counts = collections.Counter()
        for path, data in sorted(files.items()):
            parsed = man_page(path, data)
            if parsed is None:
                continue
            name, section, src = parsed
            try:
                page = render(src)
            except UnsupportedPage as e:
                stats[f"skipped: {e}"] += 1
                continue
            if page.link:
                stats["skipped: .so link"] += 1
                continue
            if (name, section) in pages:
                stats["skipped: duplicate name"] += 1
                continue
            pages[(name, section)] = (package, page)
            counts[section] += 1
        sources.append({"package": package, "version": version, "sha256": hashlib.sha256(deb).hexdigest(),
                        "pages_per_section": dict(sorted(counts.items()))})
    (out / "sources.json").write_text(json.dumps(sources, indent=1) + "\n")
    return {"stats": stats, **write_tasks(pages, out, args)}


def write_tasks(pages: dict, out: Path, args) -> dict:
    texts, seen_text = collections.defaultdict(list), set()
    qa = collections.defaultdict(list)
    for (name, section), (package, page) in sorted(pages.items()):
        text = page_text(page, name, section, tuple(args.omit_sections))
        digest = hashlib.sha256(text.encode()).hexdigest()
        if len(text.split()) >= args.min_words and digest not in seen_text:
            seen_text.add(digest)
            texts[section].append({"text": text, "label": int(section), "name": name, "package": package})
        if section in QA_SECTIONS:
            examples = qa_examples(page, name, package, args.max_questions_per_page)
            if examples:
                qa[split_of(name)].append(examples)
    rows = collections.defaultdict(list)
    for section, items in sorted(texts.items()):
        items.sort(key=lambda r: _rank(r["name"], section))
        for r in items[: args.max_per_label]:
            rows[split_of(r["name"])].append(r)
    (out / "section").mkdir(parents=True, exist_ok=True)
    (out / "options").mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        split_rows = sorted(rows[split], key=lambda r: _rank(r["name"], str(r["label"])))  # shuffled, deterministic
        _write(out / "section" / f"{split}.jsonl", split_rows)
        _write(out / "options" / f"squad-{split}.jsonl", [e for page in qa[split] for e in page])
        _write(out / "options" / f"qasper-{split}.jsonl", [qasper_record(page) for page in qa[split]])
    return {"section": {s: collections.Counter(r["label"] for r in rows[s]) for s in ("train", "validation", "test")},
            "words": sorted(len(r["text"].split()) for s in rows for r in rows[s]),
            "options": {s: (len(qa[s]), sum(len(p) for p in qa[s])) for s in ("train", "validation", "test")}}


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def summary(result: dict) -> str:
    lines = ["pages skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(result["stats"].items()))]
    lines.append("section (classification): split | " + " | ".join(f"sec {s}" for s in SECTIONS) + " | total")
    for split, c in result["section"].items():
        lines.append(f"  {split:10s} | " + " | ".join(f"{c.get(int(s), 0):5d}" for s in SECTIONS) + f" | {sum(c.values())}")
    w = result["words"]
    if w:
        lines.append(f"  words per page: min {w[0]}, median {w[len(w) // 2]}, 90th pct {w[int(0.9 * (len(w) - 1))]}, max {w[-1]}")
    lines.append("options (extractive QA): split | pages | questions")
    for split, (p, q) in result["options"].items():
        lines.append(f"  {split:10s} | {p:5d} | {q}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/debian", help="output folder (git-ignored)")
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument("--suite", default="bookworm")
    ap.add_argument("--packages", nargs="+", default=list(PACKAGES))
    ap.add_argument("--offline", action="store_true", help="use the .deb files already in OUT/debs")
    ap.add_argument("--min-words", type=int, default=150, help="shortest page kept for the section task")
    ap.add_argument("--max-per-label", type=int, default=400, help="most pages kept per section")
    ap.add_argument("--max-questions-per-page", type=int, default=10)
    ap.add_argument("--omit-sections", nargs="*", default=[], metavar="HEADING",
                    help="leave these page sections out of the classification text (e.g. NAME SYNOPSIS, which "
                         "open most pages and decide the section at once)")
    args = ap.parse_args(argv)
    result = build(get_debs(args.packages, Path(args.out), args.mirror, args.suite, args.offline), args)
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
