"""Fit requirements.txt to Airflow's constraints file for the image build (Dockerfile, stage "base").

pip refuses ``-r requirements.txt -c constraints.txt`` when a pin differs from the constraint. Airflow's image is
tested with its constraints, so for every package the constraints file names, the constraint wins: the pin is
written without a version (``pip install ... --constraint`` then installs the constrained one) and each override is
reported in the build log. Packages the constraints file does not name keep their pins. A requirement line this
script does not understand stops the build rather than slipping through unconstrained.
Standard library only: it runs with the base image's Python.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^\]]*\])?\s*==\s*(?P<version>[^\s;#]+)\s*(?P<marker>;[^#]*)?"
)


def canonical(name: str) -> str:
    """PEP 503 name: case and runs of ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _content(line: str) -> str:
    return line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""


def read_constraints(text: str) -> dict[str, str]:
    """``name==version`` lines of a constraints file → {canonical name: version}."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(_content(line))
        if match:
            pins[canonical(match["name"])] = match["version"]
    return pins


def constrain(requirements: str, constraints: dict[str, str]) -> tuple[list[str], list[str]]:
    """The requirement lines for the image and a note for every pin the constraints override."""
    lines: list[str] = []
    notes: list[str] = []
    for number, line in enumerate(requirements.splitlines(), start=1):
        content = _content(line)
        if not content:
            continue
        match = _PIN.match(content)
        if not match or match.end() != len(content):
            raise ValueError(f"requirements line {number} is not 'name==version': {content!r}")
        name, version = match["name"], match["version"]
        extras, marker = match["extras"] or "", (match["marker"] or "").strip()
        constrained = constraints.get(canonical(name))
        if constrained is None or constrained == version:
            lines.append(content)
            continue
        lines.append(f"{name}{extras}{' ' + marker if marker else ''}")
        notes.append(f"{name}: requirements.txt pins {version}, the constraints {constrained}: using {constrained}")
    return lines, notes


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: constrain_requirements.py REQUIREMENTS CONSTRAINTS OUTPUT", file=sys.stderr)
        return 2
    constraints = read_constraints(Path(argv[2]).read_text(encoding="utf-8"))
    if not constraints:
        print(f"constrain_requirements: no 'name==version' line in {argv[2]}", file=sys.stderr)
        return 1
    try:
        lines, notes = constrain(Path(argv[1]).read_text(encoding="utf-8"), constraints)
    except ValueError as exc:
        print(f"constrain_requirements: {exc}", file=sys.stderr)
        return 1
    Path(argv[3]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for note in notes:
        print(f"constrain_requirements: {note}")
    print(f"constrain_requirements: {len(lines)} requirements, {len(notes)} overridden by the constraints file")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
