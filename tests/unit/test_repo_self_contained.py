"""The repository stands on its own (issue 18): a clone placed anywhere, with no folder beside it.

- No tracked file names a document that lives outside the repository (the design notes the project
  was started from) or a path of a build machine; what the code relies on is in docs/.
- Every docs/*.md a file cites exists, and so does every numbered section (§N) it cites there.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a clone does not have: the notes outside the repository, a folder beside it, and the paths
# of the machine the project was built on. Container paths (/opt/dyref, /home/dyref) are fine.
# The names are assembled from pieces so that this file, which must spell them to look for them,
# does not itself name anything outside the repository.
_NOTES = "|".join(("DES" "IGN", "REFER" "ENCE", "REC" "IPES", "CONVEN" "TIONS"))
_BESIDE = "sha" "red"
_MACHINE = "|".join(("/wo" "rk/", "/ro" "ot/", "/o" "pt/(?:pypi|wheels|skills|tf-plugins)"))
OUTSIDE = {
    "a design note outside the repository": re.compile(rf"\b(?:{_NOTES})\.md\b"),
    "a design note outside the repository, by section": re.compile(rf"\b(?:{_NOTES}) §"),
    "a folder beside the clone": re.compile(rf"\.\./{_BESIDE}\b|[\"']{_BESIDE}[\"']\s*/"),
    "a path of the build machine": re.compile(_MACHINE),
}
DOC_CITATION = re.compile(r"docs/[\w/-]+\.md")
SECTION_CITATION = re.compile(r"(docs/[\w/-]+\.md)`?\)?,? ?((?:§\d+(?:, ?| and )?)+)")
_SKIP_DIRS = {".git", ".venv", "__pycache__", "runs", "build", "dist", ".whl", ".dyref", ".hypothesis",
              ".pytest_cache"}


def tracked_files() -> list[str]:
    """``git ls-files`` of the repository; without git (an unpacked archive), every file but the
    usual build and environment folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
        files = [f for f in out.stdout.decode().split("\0") if f]
        if files:
            return files
    except (OSError, subprocess.SubprocessError):
        pass
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        found += [(Path(dirpath) / f).relative_to(ROOT).as_posix() for f in filenames]
    return found


def text_files() -> dict[str, str]:
    texts = {}
    for rel in tracked_files():
        path = ROOT / rel
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # images and other binaries
        texts[rel] = data.decode("utf-8", errors="replace")
    return texts


def _hits(pattern: re.Pattern, texts: dict[str, str]) -> list[str]:
    return [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for rel, text in sorted(texts.items()) for m in pattern.finditer(text)]


def test_no_tracked_file_names_anything_outside_the_repository():
    texts = text_files()
    assert len(texts) > 100  # the walk found the repository, not an empty folder
    problems = {what: _hits(pattern, texts) for what, pattern in OUTSIDE.items()}
    problems = {what: hits for what, hits in problems.items() if hits}
    assert not problems, "cite docs/ instead:\n" + "\n".join(
        f"{what}:\n  " + "\n  ".join(hits) for what, hits in problems.items())


def test_the_patterns_catch_what_they_are_for():
    note, beside, machine = "REC" "IPES", "sha" "red", "/wo" "rk"
    assert OUTSIDE["a design note outside the repository"].search(f"see {note}.md §4")
    assert OUTSIDE["a design note outside the repository, by section"].search(f"(REFER" "ENCE §1.3)")
    assert OUTSIDE["a folder beside the clone"].search(f'ROOT.parent / "{beside}" / "omniref"')
    assert OUTSIDE["a folder beside the clone"].search(f"../{beside}/DES" "IGN.md")
    assert OUTSIDE["a path of the build machine"].search(f"{machine}/{beside}/omniref/examples")
    assert not OUTSIDE["a path of the build machine"].search("VIRTUAL_ENV=/opt/dyref /home/dyref")
    assert not OUTSIDE["a design note outside the repository"].search("see docs/algorithm.md §3 and k8s/README.md")


def test_every_cited_doc_and_section_exists():
    texts = text_files()
    cited: dict[str, list[str]] = {}
    for rel, text in texts.items():
        for m in DOC_CITATION.finditer(text):
            cited.setdefault(m.group(0), []).append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}")
    assert "docs/algorithm.md" in cited  # the scan reads the code's comments
    missing = {doc: where for doc, where in cited.items() if not (ROOT / doc).is_file()}
    assert not missing, "cited but not in the repository:\n" + "\n".join(
        f"  {doc} (cited by {', '.join(where[:5])}{' ...' if len(where) > 5 else ''})" for doc, where in missing.items())
    bad, checked = [], 0
    for rel, text in texts.items():
        for m in SECTION_CITATION.finditer(text):
            doc = ROOT / m.group(1)
            headings = doc.read_text() if doc.is_file() else ""
            for n in re.findall(r"§(\d+)", m.group(2)):
                checked += 1
                if not re.search(rf"^#+ §{n}\b", headings, re.M):
                    bad.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(1)} §{n}")
    assert checked > 20  # the section citations were found
    assert not bad, "cited sections without a '## §N' heading:\n  " + "\n  ".join(bad)
