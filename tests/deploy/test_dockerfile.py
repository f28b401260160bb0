"""Dockerfile: the base pinned by digest, every dependency installed with Airflow's constraints file for 3.3.2 /
Python 3.11, and the sandbox only in its own target. No Docker engine here: checked as a document, and each check
is shown to fail on a broken copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CONSTRAINTS_URL = "https://raw.githubusercontent.com/apache/airflow/constraints-3.3.2/constraints-3.11.txt"
PINNED = re.compile(r"@(sha256:[0-9a-f]{64}|\$\{(?P<arg>[A-Za-z_][A-Za-z0-9_]*):\?\})$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), " ".join(rest.split())))
    return result


def stages(text: str) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(name, FROM image, instructions) per stage; global ARGs before the first FROM are left out."""
    found: list[tuple[str, str, list[tuple[str, str]]]] = []
    for word, args in instructions(text):
        if word == "FROM":
            image, _, name = args.partition(" AS ")
            found.append((name.strip() or str(len(found)), image.strip(), []))
        elif found:
            found[-1][2].append((word, args))
    return found


def pin_problems(text: str) -> list[str]:
    problems = []
    names = [name for name, _, _ in stages(text)]
    global_args = {}
    for word, args in instructions(text):
        if word == "FROM":
            break
        if word == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
    for _, image, _ in stages(text):
        if image in names:
            continue
        match = PINNED.search(image)
        if not match:
            problems.append(f"FROM {image} is not pinned by digest")
        elif match["arg"] and global_args.get(match["arg"]) != "":
            problems.append(f"the digest argument {match['arg']} is not a declared ARG without a default")
        elif not image.startswith("apache/airflow:3.3.2-python3.11@"):
            problems.append(f"FROM {image} is not Airflow 3.3.2 on Python 3.11")
    return problems


def constraint_problems(text: str) -> list[str]:
    problems = []
    arg = f"ARG AIRFLOW_CONSTRAINTS_URL={CONSTRAINTS_URL}"
    if arg not in {f"{w} {a}" for w, a in instructions(text)}:
        problems.append(f"missing {arg}")
    runs = [a for w, a in instructions(text) if w == "RUN"]
    if not any('curl -fsSL "${AIRFLOW_CONSTRAINTS_URL}"' in run for run in runs):
        problems.append("the constraints file is not fetched from AIRFLOW_CONSTRAINTS_URL")
    for run in runs:
        for command in re.split(r"&&|;", run):
            if "pip install" in command and "--no-deps" not in command and "--constraint" not in command:
                problems.append(f"pip installs dependencies without --constraint: {command.strip()}")
    return problems


def sandbox_problems(text: str) -> list[str]:
    """The last stage (the default target) is 'runtime', and neither it nor a stage it builds on copies sandbox/."""
    found = stages(text)
    by_name = {name: (image, body) for name, image, body in found}
    problems = []
    if not found or found[-1][0] != "runtime":
        problems.append("the last (default) stage is not 'runtime'")
    name = "runtime"
    while name in by_name:
        image, body = by_name[name]
        for word, args in body:
            if word in ("COPY", "ADD") and re.search(r"(^|\s)\.?/?sandbox(/|\s|$)", args):
                problems.append(f"stage {name} copies the sandbox: {word} {args}")
            if word in ("COPY", "ADD") and re.search(r"(^|\s)\.(/)?(\s|$)", args):
                problems.append(f"stage {name} copies the whole context: {word} {args}")
        name = image
    if "sandbox" not in by_name:
        problems.append("no 'sandbox' stage for the compose profile")
    return problems


CHECKS = {"pin": pin_problems, "constraints": constraint_problems, "sandbox": sandbox_problems}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_real_file_passes(check: str) -> None:
    assert CHECKS[check](DOCKERFILE) == []


MUTATIONS = [
    ("pin", "python3.11@${AIRFLOW_BASE_DIGEST:?} AS base", "python3.11 AS base"),
    ("pin", "python3.11@${AIRFLOW_BASE_DIGEST:?} AS base", "python3.11@${AIRFLOW_BASE_DIGEST} AS base"),
    ("pin", "ARG AIRFLOW_BASE_DIGEST\n", "ARG AIRFLOW_BASE_DIGEST=sha256:deadbeef\n"),
    ("pin", "apache/airflow:3.3.2-python3.11@", "apache/airflow:latest@"),
    ("constraints", "--constraint /opt/d365/build/constraints.txt", ""),
    ("constraints", "constraints-3.3.2/constraints-3.11.txt", "constraints-3.3.2/constraints-3.12.txt"),
    ("constraints", "pip install --no-cache-dir --no-deps -e /opt/d365", "pip install --no-cache-dir -e /opt/d365"),
    (
        "sandbox",
        "COPY --chown=airflow:0 plugins/d365",
        "COPY --chown=airflow:0 sandbox /opt/d365/sandbox\nCOPY plugins/d365",
    ),
    ("sandbox", "-e /opt/d365\n", "-e /opt/d365\nFROM base AS tools\n"),
    ("sandbox", "FROM base AS runtime\n", "FROM sandbox AS runtime\n"),
]


@pytest.mark.parametrize(("check", "old", "new"), MUTATIONS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(MUTATIONS)])
def test_each_check_fails_on_a_broken_copy(check: str, old: str, new: str) -> None:
    assert DOCKERFILE.count(old) == 1, f"mutation target not found once: {old!r}"
    assert CHECKS[check](DOCKERFILE.replace(old, new)), f"{check} did not notice: {old!r} -> {new!r}"


def test_image_installs_the_package_and_the_init_helper() -> None:
    assert DOCKERFILE.startswith("# syntax=docker/dockerfile:1\n")
    assert "pip install --no-cache-dir --no-deps -e /opt/d365" in DOCKERFILE
    assert "deploy/write_auth_passwords.py /opt/d365/deploy/" in DOCKERFILE
    assert "docker buildx imagetools inspect apache/airflow:3.3.2-python3.11" in DOCKERFILE
