"""scripts/debian_text.py and scripts/manpage.py on the committed excerpts (tests/data/debian/, licences
in its README): roff → text, the section label, the option questions and their answer spans, and the
whole build from a .deb assembled here (offline)."""

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from datamodules.qasper_schema import qasper_context

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import debian_text  # noqa: E402  (scripts/ is not a package: the script is run as `python scripts/debian_text.py`)
import manpage  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "debian"
PAGES = {"cp.1": "coreutils", "git-rm.1": "git-man", "close.2": "manpages-dev", "strlen.3": "manpages-dev",
         "shells.5": "manpages", "mkswap.8": "util-linux"}


def page(name: str) -> manpage.Page:
    return manpage.render((DATA / name).read_text())


def _ar(members: dict[str, bytes]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members.items():
        out.append(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def make_deb(files: dict[str, bytes]) -> bytes:
    """A .deb (ar: debian-binary, control.tar.xz, data.tar.xz) holding ``files`` under ``./``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/share/man/man1/copy.1.gz")  # a symlink: not a page
        link.type, link.linkname = tarfile.SYMTYPE, "cp.1.gz"
        tar.addfile(link)
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()})


# ---------------------------------------------------------------------------- roff → text
@pytest.mark.parametrize("name", sorted(PAGES))
def test_render_leaves_no_roff(name):
    p = page(name)
    stem, section = name.rsplit(".", 1)
    assert p.name.lower() == stem and p.section == section
    text = p.text
    assert not any(line.startswith((".", "'")) for line in text.splitlines())
    for escape in ("\\fB", "\\fI", "\\fR", "\\fP", "\\(", "\\*(", "\\*[", "\\-", "\\&"):
        assert escape not in text, escape
    assert p.blocks[0].kind == "heading" and p.blocks[0].text == "NAME"
    assert all(text[b.start:b.start + len(b.text)] == b.text for b in p.blocks)


def test_render_text_of_known_pages():
    cp = page("cp.1").text
    assert cp.startswith("NAME\n\ncp - copy files and directories\n\nSYNOPSIS\n\ncp [OPTION]... [-T] SOURCE DEST\n")
    assert "September 2022" not in cp  # the .TH line is not text
    assert "Copyright © 2022 Free Software Foundation, Inc." in cp
    git = page("git-rm.1").text
    assert "git rm 'd*' and git rm 'd/*'" in git  # \*(Aq from the .ie/.el string definitions
    assert "Don't actually remove any file(s)." in git  # \(cq and \&.
    assert "portability" not in git  # comments dropped
    assert "git rm Documentation/\\*.txt" in git  # \e is a printed backslash
    strlen = page("strlen.3").text
    assert "#include <string.h>\n\nsize_t strlen(const char *s);" in strlen
    assert "excluding the terminating null byte ('\\0')." in strlen  # \e → a backslash
    assert "Interface Attribute Value" in strlen and "lbx" not in strlen  # tbl format lines dropped


def test_option_lists_are_tags_and_items():
    def pairs(name):
        blocks = page(name).blocks
        return {a.text: b.text for a, b in zip(blocks, blocks[1:]) if a.kind == "tag" and b.kind == "item"}

    assert pairs("cp.1")["-a, --archive"] == "same as -dR --preserve=all"  # help2man .TP
    assert pairs("mkswap.8")["-q, --quiet"] == "Suppress output and warning messages."  # Asciidoctor .RS
    assert pairs("git-rm.1")["-r"] == "Allow recursive removal when a leading directory name is given."  # DocBook
    assert pairs("close.2")["EBADF"] == "fd isn't a valid open file descriptor."


def test_escapes_and_arguments():
    assert manpage.expand_escapes(r"\fB\-r\fR, \f(BI\-\-recursive\fP \(em \[u00E9]\*(lqx\*(rq\e") == '-r, --recursive — é"x"\\'
    assert manpage.expand_escapes(r"a\h'3n'b\s-1c\s+1 d\~e\c") == "abc d e"
    assert manpage.split_args(r'\-r "two words"  x') == [r"\-r", "two words", "x"]
    assert manpage.split_args('"say ""hi""" b') == ['say "hi"', "b"]


def test_links_and_mdoc_pages():
    assert manpage.render(".so man3/strlen.3\n").link == "man3/strlen.3"
    with pytest.raises(manpage.UnsupportedPage, match="mdoc"):
        manpage.render(".Dd $Mdocdate$\n.Dt SSH 1\n.Os\n.Sh NAME\n.Nm ssh\n")


def test_option_of_and_first_sentence():
    assert manpage.option_of("-r, -R, --recursive") == "-r"
    assert manpage.option_of("--backup[=CONTROL]") == "--backup"
    assert manpage.option_of("--") is None and manpage.option_of("EBADF") is None
    assert manpage.first_sentence("Use e.g. foo here. Then bar.") == "Use e.g. foo here."
    assert manpage.first_sentence("no full stop at all") == "no full stop at all"
    assert manpage.first_sentence("one two three four", max_words=2) == "one two"


# ---------------------------------------------------------------------------- labels and questions
def test_section_label_from_the_path():
    src = gzip.compress(b".TH X 3\n")
    assert debian_text.man_page("usr/share/man/man3/strlen.3.gz", src) == ("strlen", "3", ".TH X 3\n")
    assert debian_text.man_page("usr/share/man/man3/SSL_new.3ssl.gz", src)[:2] == ("SSL_new", "3")
    assert debian_text.man_page("usr/share/man/man7/regex.7.gz", src) is None  # not one of the five sections
    assert debian_text.man_page("usr/share/man/de/man1/cp.1.gz", src) is None  # a translation


def test_page_text_removes_the_pages_own_section():
    p = manpage.render(".TH FOO 3\n.SH NAME\nfoo \\- bar\n.SH SEE ALSO\n.BR foo (3),\n.BR foobar (3),\n.BR bar (2)\n")
    assert debian_text.page_text(p, "foo", "3") == "NAME\n\nfoo - bar\n\nSEE ALSO\n\nfoo, foobar(3), bar(2)"
    assert debian_text.page_text(p, "foo", "3", omit=("name",)) == "SEE ALSO\n\nfoo, foobar(3), bar(2)"


@pytest.mark.parametrize("name", ["cp.1", "mkswap.8", "git-rm.1"])
def test_qa_answers_are_spans_of_the_context(name):
    stem = name.rsplit(".", 1)[0]
    examples = debian_text.qa_examples(page(name), stem, PAGES[name], max_questions=1000)
    assert len(examples) >= 8
    for e in examples:
        (answer,), (start,) = e["answers"]["text"], e["answers"]["answer_start"]
        assert e["context"][start:start + len(answer)] == answer and len(answer.split()) >= 3
        assert e["question"] == f"What does the {e['id'].split(':', 1)[1]} option of {stem} do?"
    by_option = {e["id"].split(":", 1)[1]: e["answers"]["text"][0] for e in examples}
    expected = {"cp.1": ("-a", "same as -dR --preserve=all"), "mkswap.8": ("-q", "Suppress output and warning messages."),
                "git-rm.1": ("-n", "Don't actually remove any file(s).")}[name]
    assert by_option[expected[0]] == expected[1]
    assert len(debian_text.qa_examples(page(name), stem, PAGES[name], max_questions=3)) == 3


def test_parse_packages_index():
    index = debian_text.parse_packages("Package: a\nVersion: 1\nFilename: pool/a.deb\nDescription: x\n more\n\n"
                                       "Package: b\nVersion: 2\nSHA256: ff\n")
    assert index["a"]["Filename"] == "pool/a.deb" and index["a"]["Description"] == "x\nmore"
    assert index["b"] == {"Package": "b", "Version": "2", "SHA256": "ff"}


# ---------------------------------------------------------------------------- the whole build, offline
def test_build_offline_from_a_deb(tmp_path, capsys):
    by_package: dict[str, dict[str, bytes]] = {}
    for name, package in PAGES.items():
        path = f"usr/share/man/man{name[-1]}/{name}.gz"
        by_package.setdefault(package, {})[path] = gzip.compress((DATA / name).read_bytes())
    by_package["coreutils"]["usr/share/doc/coreutils/copyright"] = b"License: GPL-3+\n"
    out = tmp_path / "out"
    (out / "debs").mkdir(parents=True)
    for package, files in by_package.items():
        (out / "debs" / f"{package}_1.0_all.deb").write_bytes(make_deb(files))
    assert debian_text.main(["--out", str(out), "--offline", "--packages", *by_package, "--min-words", "50"]) == 0
    printed = capsys.readouterr().out
    assert "section (classification)" in printed and "options (extractive QA)" in printed
    rows = {s: [json.loads(x) for x in (out / "section" / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "validation", "test")}
    got = {r["name"]: (r["label"], split) for split, rs in rows.items() for r in rs}
    assert {n: lab for n, (lab, _) in got.items()} == {"cp": 1, "git-rm": 1, "close": 2, "strlen": 3, "shells": 5, "mkswap": 8}
    for n, (_, split) in got.items():  # the split is sha256(name) mod 100: < 80 train, < 90 validation
        bucket = int(hashlib.sha256(n.encode()).hexdigest(), 16) % 100
        assert split == ("train" if bucket < 80 else "validation" if bucket < 90 else "test")
    assert all(f"({r['label']})" not in r["text"].split("SEE ALSO")[0][:200] for rs in rows.values() for r in rs)
    assert (out / "licences" / "coreutils.copyright").read_bytes() == b"License: GPL-3+\n"
    sources = json.loads((out / "sources.json").read_text())
    assert {s["package"]: s["pages_per_section"] for s in sources}["manpages-dev"] == {"2": 1, "3": 1}
    for split in ("train", "validation", "test"):
        squad = [json.loads(x) for x in (out / "options" / f"squad-{split}.jsonl").read_text().splitlines()]
        qasper = [json.loads(x) for x in (out / "options" / f"qasper-{split}.jsonl").read_text().splitlines()]
        contexts = {e["title"]: e["context"] for e in squad}
        assert {r["id"] for r in qasper} == set(contexts) and all(split == got[t][1] for t in contexts)
        for r in qasper:  # QASPER's context (abstract + paragraphs) is the page text the spans index
            assert qasper_context(r) == contexts[r["id"]]
    # a second build from the same .deb files writes the same bytes
    first = (out / "section" / "train.jsonl").read_bytes()
    debian_text.main(["--out", str(out), "--offline", "--packages", *by_package, "--min-words", "50"])
    assert (out / "section" / "train.jsonl").read_bytes() == first
