"""The distribution installs one top-level import package, ``warmstart``, with every module of
the repository's layer folders mapped into it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"warmstart": "warmstart", "infra": "warmstart/infra", "snapshot": "warmstart/snapshot",
           "workers": "warmstart/workers", "scheduler": "warmstart/scheduler", "bench": "warmstart/bench"}  # fmt: skip


def test_the_wheel_holds_warmstart_alone_with_every_module(tmp_path: Path) -> None:
    # No build isolation: the venv's setuptools builds it, so no download is needed.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("warmstart-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"warmstart"}
    expected = {
        f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, target in FOLDERS.items()
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected - set(names) == set()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "warmstart = warmstart.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
