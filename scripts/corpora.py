#!/usr/bin/env python3
"""Builds the benchmark's domain texts (bench/corpora/) from license-clean sources that a Debian
machine with this repo's set-up has or fetches from Debian's archive. Run by hand; its output is
committed, so a benchmark never needs the sources.

Each domain gets three texts from three disjoint sets of documents (files, books or quotation
files), dealt round-robin in a fixed order (by the SHA-256 of their names):
  calib.txt    what a user would hand podar as "my domain": calibration;
  tune.txt     evaluation text on which defaults may be chosen;
  heldout.txt  evaluation text that is only reported, never tuned on.
Each text is at most PART_CHARS characters (about 10-16k SmolLM2 tokens), from at most DOC_CHARS
of each document, so that every text mixes many documents.

Usage: python3 scripts/corpora.py [OUT_DIR]   (default bench/corpora)
Needs: apt-get (for `apt-get download` of fortunes-de, fortunes-es, fortunes-it, fortunes and
r-cran-janeaustenr), dpkg-deb, Debian's python3.11 standard library in /usr/lib/python3.11, the
pinned nightly's rust-src (make setup), node_modules (make setup-test), and the Python package
`rdata` (to read the Austen novels out of the R package).
"""
import glob
import hashlib
import gzip
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

PART_CHARS = 48_000
DOC_CHARS = 4_000
PARTS = ("calib", "tune", "heldout")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def debs(names, into):
    """Unpacks Debian packages (downloaded with apt-get) into `into`."""
    subprocess.run(["apt-get", "download", *names], cwd=into, check=True, capture_output=True)
    for deb in glob.glob(os.path.join(into, "*.deb")):
        subprocess.run(["dpkg-deb", "-x", deb, os.path.join(into, "x")], check=True)
    return os.path.join(into, "x")


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def fortunes(path):
    """The quotations of one fortune file, separated by lines holding only '%'."""
    entries = [e.strip("\n") for e in re.split(r"(?m)^%\s*$", read(path))]
    return "\n\n".join(e for e in entries if e.strip())


def code_file(path):
    """A source file without its leading comment block (licence headers), blank lines squeezed."""
    text = read(path)
    text = re.sub(r"\A(\s*(#|//)[^\n]*\n)+", "", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def deal(docs):
    """Deals (name, text) documents round-robin into the three parts, each up to PART_CHARS. From
    each document at most DOC_CHARS, or more where the documents are few (quotation files)."""
    per_doc = max(DOC_CHARS, 2 * 3 * PART_CHARS // max(len(docs), 1))
    # In the order of their names' hashes: a fixed order that mixes packages and folders.
    docs = sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())
    parts = {p: [] for p in PARTS}
    sizes = {p: 0 for p in PARTS}
    names = {p: [] for p in PARTS}
    for i, (name, text) in enumerate(docs):
        p = PARTS[i % 3]
        room = PART_CHARS - sizes[p]
        text = text.strip()[: max(0, min(per_doc, room))]
        if len(text) < 200:
            continue
        parts[p].append(text)
        sizes[p] += len(text) + 2
        names[p].append(name)
    return {p: "\n\n".join(parts[p]) for p in PARTS}, names


def books(parts_of):
    """Whole documents given per part (the Austen novels, the licences): each part is its
    documents' text from the start, up to PART_CHARS."""
    texts, names = {}, {}
    for p, docs in parts_of.items():
        texts[p] = "\n\n".join(t for _, t in docs)[:PART_CHARS]
        names[p] = [n for n, _ in docs]
    return texts, names


def austen(x):
    """The six novels of the R package janeaustenr (R's lazy-load database: zlib'd R objects)."""
    import rdata

    base = os.path.join(x, "usr/lib/R/site-library/janeaustenr/data/Rdata")
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(open(base + ".rdx", "rb").read())))
    db = open(base + ".rdb", "rb").read()
    novels = {}
    for name, (off, n) in index["variables"].items():
        blob = db[int(off) : int(off) + int(n)]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
        text = "\n".join(str(l) for l in lines)
        # From the first chapter on: the title pages are not prose.
        start = re.search(r"(?m)^(CHAPTER|Chapter) (1|I)\b", text)
        novels[str(name)] = text[start.start() if start else 0 :]
    return novels


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench/corpora")
    tmp = tempfile.mkdtemp()
    x = debs(["fortunes-de", "fortunes-es", "fortunes-it", "fortunes", "r-cran-janeaustenr"], tmp)
    games = os.path.join(x, "usr/share/games/fortunes")
    rust = glob.glob(os.path.expanduser("~/.rustup/toolchains/nightly-*/lib/rustlib/src/rust/library"))[0]
    nm = os.path.join(ROOT, "node_modules")

    def quotes(folder, skip=()):
        files = sorted(f for f in os.listdir(folder) if not f.endswith((".dat", ".u8", "-pre")) and f not in skip)
        return [(f, fortunes(os.path.join(folder, f))) for f in files if os.path.isfile(os.path.join(folder, f))]

    def mit_readmes():
        docs = []
        for pkg in sorted(glob.glob(os.path.join(nm, "*/package.json")) + glob.glob(os.path.join(nm, "@*/*/package.json"))):
            d = os.path.dirname(pkg)
            if json.load(open(pkg)).get("license") != "MIT":
                continue
            for md in sorted(glob.glob(os.path.join(d, "*.md")) + glob.glob(os.path.join(d, "docs/**/*.md"), recursive=True)):
                if not re.search(r"(CHANGELOG|HISTORY|LICENSE|CODE_OF_CONDUCT)", md, re.I):
                    docs.append((os.path.relpath(md, nm), read(md)))
        return docs

    novels = austen(x)
    licences = "/usr/share/common-licenses"
    lic = lambda *names: [(n, read(os.path.join(licences, n))) for n in names]
    py = "/usr/lib/python3.11"
    domains = {
        # (what, source, licence, how the three parts were made)
        "python": (
            "Python code",
            "Debian's python3.11 standard library, files of its packages (email/, json/, asyncio/, …; "
            "the shared corpus used the top-level files)",
            "PSF-2.0",
            deal([(os.path.relpath(f, py), code_file(f)) for f in sorted(glob.glob(os.path.join(py, "*/**/*.py"), recursive=True))
                  if "/test" not in f and "/idlelib/" not in f and "/lib2to3/" not in f]),
        ),
        "rust": (
            "Rust code",
            "Rust's standard library sources (rust-src of the pinned nightly: core, alloc, std)",
            "MIT OR Apache-2.0",
            deal([(os.path.relpath(f, rust), code_file(f)) for lib in ("core", "alloc", "std")
                  for f in sorted(glob.glob(os.path.join(rust, lib, "src/**/*.rs"), recursive=True)) if "/tests" not in f]),
        ),
        "javascript": (
            "JavaScript code",
            "webpack's lib/ (node_modules, from this repo's npm set-up)",
            "MIT",
            deal([(os.path.relpath(f, nm), code_file(f)) for f in sorted(glob.glob(os.path.join(nm, "webpack/lib/**/*.js"), recursive=True))]),
        ),
        "docs": (
            "technical documentation (English Markdown)",
            "README and docs/*.md of the MIT-licensed npm packages in node_modules",
            "MIT",
            deal(mit_readmes()),
        ),
        "austen": (
            "English prose",
            "Jane Austen's Emma (calib), Mansfield Park (tune) and Persuasion (heldout), Debian's r-cran-janeaustenr "
            "(the shared corpus used Sense and Sensibility and Pride and Prejudice)",
            "public domain",
            books({"calib": [("emma", novels["emma"])], "tune": [("mansfieldpark", novels["mansfieldpark"])],
                   "heldout": [("persuasion", novels["persuasion"])]}),
        ),
        "quotes-en": (
            "English quotations and jokes",
            "Debian's fortunes (the English files, without the offensive ones and ASCII art)",
            "BSD-3-Clause (Debian's fortunes package)",
            deal(quotes(games, skip=("art", "ascii-art", "banner", "de", "es", "it", "off", "definizioni", "formiche", "italia",
                                     "itatrek", "jackfr", "leggi", "luke", "luttazzi", "norm", "paolotedeschi", "zuse",
                                     "translate-me"))),
        ),
        "german": (
            "German quotations, jokes and recipes",
            "Debian's fortunes-de, every file but zitate (which the shared corpus used) and the ASCII art",
            "GPL-2+ (Debian's fortunes-de)",
            deal(quotes(os.path.join(games, "de"), skip=("zitate", "asciiart"))),
        ),
        "spanish": (
            "Spanish quotations and proverbs",
            "Debian's fortunes-es",
            "quotations presumed public domain; GPL-2+ (Debian's fortunes-es)",
            deal(quotes(os.path.join(games, "es"))),
        ),
        "italian": (
            "Italian quotations and jokes",
            "Debian's fortunes-it",
            "public domain (Debian's fortunes-it)",
            deal(quotes(os.path.join(games, "it"))),
        ),
        "legal": (
            "legal text (software licences)",
            "/usr/share/common-licenses: GPL-3 and GPL-2 (calib); Apache-2.0, MPL-2.0, MPL-1.1 and Artistic (tune); "
            "LGPL-2.1, GFDL-1.3 and CC0-1.0 (heldout)",
            "verbatim copying permitted",
            books({"calib": lic("GPL-3", "GPL-2"), "tune": lic("Apache-2.0", "MPL-2.0", "MPL-1.1", "Artistic"),
                   "heldout": lic("LGPL-2.1", "GFDL-1.3", "CC0-1.0")}),
        ),
    }
    rows = []
    for name, (what, source, licence, (texts, names)) in domains.items():
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for p in PARTS:
            with open(os.path.join(out, name, f"{p}.txt"), "w", encoding="utf-8") as f:
                f.write(texts[p].strip() + "\n")
        rows.append((name, what, source, licence, {p: (len(texts[p]), len(names[p])) for p in PARTS}))
    with open(os.path.join(out, "sources.json"), "w") as f:
        json.dump({n: {"what": w, "source": s, "license": l, "parts": {p: {"chars": c, "documents": d} for p, (c, d) in parts.items()}}
                   for n, w, s, l, parts in rows}, f, indent=1)
    for n, w, s, l, parts in rows:
        print(f"{n:11} {w:45} " + "  ".join(f"{p} {c} chars/{d} docs" for p, (c, d) in parts.items()))


if __name__ == "__main__":
    main()
