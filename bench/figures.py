"""Raw figures as one flat JSON document per measuring entry point, under bench/results/.

Every value is a scalar. The document holds the command line and each option
(`option_*`), the machine (`machine_*`) and the figures, each named with its
unit (`runs_per_second`, `cpu_ms_per_run`, `rss_mib`, ...). A breakdown is
flattened with dots: `redis_commands_per_run.hincrby`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from bench.common import ROOT, redact

RESULTS = ROOT / "bench" / "results"
Scalar = str | int | float | bool | None


def add_json_option(parser: argparse.ArgumentParser, entry_point: str) -> None:
    """`--json PATH`, by default bench/results/{entry_point}.json."""
    default = RESULTS / f"{entry_point}.json"
    parser.add_argument(
        "--json",
        type=Path,
        default=default,
        help=f"where to write the raw figures (default: {default.relative_to(ROOT)})",
    )


def flat(prefix: str, mapping: Mapping[str, Any]) -> dict[str, Scalar]:
    """`{prefix}.{key}` for each entry of `mapping` (nested mappings too)."""
    out: dict[str, Scalar] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(flat(name, value))
        else:
            out[name] = value
    return out


def machine() -> dict[str, Scalar]:
    """What the figures were measured on; the load average says what else ran."""
    one, five, _fifteen = os.getloadavg()
    return {
        "machine_cpu_count": os.cpu_count(),
        "machine_memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "machine_system": f"{platform.system()} {platform.machine()}",
        "machine_python_version": platform.python_version(),
        "machine_loadavg_1min_at_start": one,
        "machine_loadavg_5min_at_start": five,
    }


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def document(
    entry_point: str,
    args: argparse.Namespace,
    machine_at_start: dict[str, Scalar],
    figures: dict[str, Any],
) -> dict[str, Scalar]:
    """The JSON document: command line, options, machine (as machine() gave it), figures."""
    options = {}
    for name, value in vars(args).items():
        if isinstance(value, Path):
            value = str(value.relative_to(ROOT) if value.is_relative_to(ROOT) else value)
        elif isinstance(value, list):
            value = " ".join(map(str, value))
        elif isinstance(value, str) and "://" in value:
            value = redact(value)
        options[f"option_{name}"] = value
    argv = [redact(a) if "://" in a else a for a in sys.argv[1:]]
    body: dict[str, Any] = {
        "entry_point": f"bench.{entry_point}",
        "command_line": shlex.join(["python", "-m", f"bench.{entry_point}", *argv]),
        "measured_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_commit": _git("rev-parse", "HEAD"),
        # Changes not yet committed (bench/results/ aside, and a worktree's
        # .venv symlink) were measured too.
        "code_uncommitted_changes": bool(
            _git("status", "--porcelain", "--", ":!bench/results", ":!.venv")
        ),
        **options,
        **machine_at_start,
        "machine_loadavg_1min_at_end": os.getloadavg()[0],
        **figures,
    }
    for key, value in body.items():
        if not isinstance(value, Scalar):
            raise TypeError(f"{key} is a {type(value).__name__}: the document must stay flat")
    return body


def write(path: Path, body: dict[str, Scalar]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {path}")
