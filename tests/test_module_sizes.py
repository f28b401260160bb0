"""No product module over 500 lines (issue 10): a module that grows past it is split by concern, not let grow.

``KNOWN_OVER_LIMIT`` lists the modules still being split when this test was written; it may only shrink: a listed
module that is back under the limit (or gone) fails the test until it is taken off the list.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT_DIRS = ("plugins", "dags")
MAX_LINES = 500

# Paths relative to the repo; remove an entry as soon as its module is split.
KNOWN_OVER_LIMIT: frozenset[str] = frozenset()


def module_lines(root: Path) -> dict[str, int]:
    """Every Python module under the product directories of ``root`` → its number of lines."""
    sizes: dict[str, int] = {}
    for top in PRODUCT_DIRS:
        for path in sorted((root / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            sizes[path.relative_to(root).as_posix()] = len(path.read_text(encoding="utf-8").splitlines())
    return sizes


def over_limit(sizes: dict[str, int], known: frozenset[str] = frozenset()) -> dict[str, int]:
    return {path: n for path, n in sorted(sizes.items()) if n > MAX_LINES and path not in known}


def test_the_scan_sees_the_product_modules() -> None:
    sizes = module_lines(REPO)
    assert "plugins/d365/pipeline/settings.py" in sizes
    assert "dags/dreamapply_to_dynamics365.py" in sizes
    assert sizes["plugins/d365/pipeline/settings.py"] > 100


def test_a_module_over_the_limit_is_listed(tmp_path: Path) -> None:
    (tmp_path / "plugins" / "pkg").mkdir(parents=True)
    (tmp_path / "dags").mkdir()
    (tmp_path / "plugins" / "pkg" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "plugins" / "pkg" / "fits.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "dags" / "big_dag.py").write_text("x = 1\n" * (MAX_LINES + 7))
    assert over_limit(module_lines(tmp_path)) == {"dags/big_dag.py": MAX_LINES + 7, "plugins/pkg/big.py": MAX_LINES + 1}


def test_no_product_module_is_over_500_lines() -> None:
    offenders = over_limit(module_lines(REPO), KNOWN_OVER_LIMIT)
    listing = "\n".join(f"  {path}: {n} lines" for path, n in offenders.items())
    assert not offenders, f"modules over {MAX_LINES} lines (split them by concern):\n{listing}"


@pytest.mark.parametrize("path", sorted(KNOWN_OVER_LIMIT))
def test_a_known_exception_is_still_over_the_limit(path: str) -> None:
    """The list of exceptions can only shrink: once a module is split, its entry must go."""
    sizes = module_lines(REPO)
    assert path in sizes, f"{path} no longer exists: take it off KNOWN_OVER_LIMIT"
    assert sizes[path] > MAX_LINES, f"{path} has {sizes[path]} lines now: take it off KNOWN_OVER_LIMIT"
