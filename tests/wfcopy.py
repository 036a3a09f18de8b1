"""Helpers for tests that run Snakemake on a copy of this workflow (never on the checkout)."""
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path, extra: tuple[str, ...] = (), link_package: bool = True) -> Path:
    """Copy the Snakefile, workflow/, config/ and the ``extra`` folders into ``dest``.

    ``link_package`` links pgopd/ too, so ``workflow.basedir`` finds the package source.
    """
    dest = Path(dest)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for sub in ("workflow", "config", *extra):
        shutil.copytree(ROOT / sub, dest / sub)
    if link_package:
        (dest / "pgopd").symlink_to(ROOT / "pgopd")
    return dest


def job_counts(out: str) -> dict[str, int]:
    """rule -> number of jobs, read off the "Job stats:" table of ``snakemake -n`` output."""
    table = out.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts
