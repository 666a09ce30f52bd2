#!/usr/bin/env python3
"""Third-party licence notices for every crate linked into rc-audit-hec, generated from
`cargo metadata` and the licence files the crates ship (nothing typed by hand).

    packaging/third_party_notices.py OUTPUT.html

Linked means: reached from rc-audit-hec through normal dependencies on x86_64 Linux (dev- and
build-dependencies are not in the binary). Each distinct licence text appears once, with the
crates that ship it. Exits 1, naming them, if a crate has no licence file or no licence
expression: that needs a look before shipping, not a silent gap. (cargo-about does the same job;
it takes ~20 minutes to build on a 2-core CI machine, this takes a second.)
"""
import hashlib
import html
import json
import os
import re
import subprocess
import sys

TARGET = "x86_64-unknown-linux-gnu"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The MIT licence (SPDX "MIT"), for a crate offering it that ships no licence file: the holders
# are its Cargo.toml authors, or, when it names none, its authors at its repository (what
# cargo-about does: the standard text of the licence the crate declares).
MIT_TEXT = """Copyright (c) {holders}

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""
LICENCE_FILE = re.compile(r"^(licen[cs]e|copying|notice|copyright|unlicense)([-._].*)?$", re.I)


def linked_packages(meta):
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    seen, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                stack.append(dep["pkg"])
    seen.discard(root)
    return sorted((packages[p] for p in seen), key=lambda p: (p["name"], p["version"]))


def licence_files(package):
    directory = os.path.dirname(package["manifest_path"])
    names = [n for n in sorted(os.listdir(directory)) if LICENCE_FILE.match(n)]
    paths = [os.path.join(directory, n) for n in names]
    if package.get("license_file"):
        extra = os.path.normpath(os.path.join(directory, package["license_file"]))
        if extra not in paths and os.path.isfile(extra):
            paths.append(extra)
    return [p for p in paths if os.path.isfile(p)]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", TARGET],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    texts = {}  # digest -> (text, [crate labels])
    crates = []
    problems = []
    for package in linked_packages(meta):
        label = f'{package["name"]} {package["version"]}'
        expression = package.get("license")
        files = licence_files(package)
        if not expression:
            problems.append(f"{label}: no licence expression in its Cargo.toml")
        anchors = []
        if not files and re.fullmatch(r"(.+ OR )?Apache-2\.0( OR .+)?", expression or ""):
            # Like cargo-about: a crate without a licence file, offering Apache-2.0, gets the
            # standard Apache-2.0 text (this repository's LICENSE is that text, unmodified).
            files = [os.path.join(REPO, "LICENSE")]
        elif not files and re.fullmatch(r"(.+ OR )?MIT( OR .+)?", expression or ""):
            # The same for MIT (the SIMD base64 crates the AWS SDK uses ship none and name no
            # authors): the standard text, the holders as the crate names them.
            holders = ", ".join(package.get("authors") or []) or (
                f'the authors of {package["name"]} ({package.get("repository") or "crates.io"})'
            )
            text = MIT_TEXT.format(holders=holders)
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            texts.setdefault(digest, (text, []))[1].append(
                f"{label} (no licence file shipped; the standard text of the MIT licence it declares)"
            )
            crates.append((label, expression, package.get("repository") or "", [digest]))
            continue
        elif not files:
            problems.append(f"{label}: ships no licence file")
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            source = os.path.basename(path)
            if os.path.dirname(path) == REPO:
                source = "no licence file shipped; the standard Apache-2.0 text it offers"
            texts.setdefault(digest, (text, []))[1].append(f"{label} ({source})")
            anchors.append(digest)
        crates.append((label, expression or "?", package.get("repository") or "", anchors))
    if problems:
        sys.exit("third-party notices incomplete:\n  " + "\n  ".join(problems))

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>rc-audit-hec: third-party licences</title></head><body>",
        "<h1>Third-party licences</h1>",
        f"<p>The rc-audit-hec binary links the {len(crates)} crates below. Generated by "
        "packaging/third_party_notices.py from Cargo.lock and the licence files the crates "
        "ship; not edited by hand.</p>",
        "<h2>Crates</h2>",
        "<table><tr><th>crate</th><th>licence</th><th>texts</th></tr>",
    ]
    for label, expression, repository, anchors in crates:
        name = html.escape(label)
        if repository:
            name = f'<a href="{html.escape(repository)}">{name}</a>'
        links = " ".join(f'<a href="#{a}">{i + 1}</a>' for i, a in enumerate(anchors))
        out.append(f"<tr><td>{name}</td><td>{html.escape(expression)}</td><td>{links}</td></tr>")
    out.append("</table>")
    out.append("<h2>Licence texts</h2>")
    for digest, (text, users) in sorted(texts.items(), key=lambda t: t[1][1][0]):
        out.append(f'<h3 id="{digest}">{html.escape(users[0])}</h3>')
        if len(users) > 1:
            out.append("<p>Also shipped by: " + html.escape(", ".join(users[1:])) + "</p>")
        out.append(f"<pre>{html.escape(text)}</pre>")
    out.append("</body></html>")
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    print(f"   {len(crates)} crates, {len(texts)} distinct licence texts -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
