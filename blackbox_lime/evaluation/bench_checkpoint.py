"""Resumable benchmark runs: every finished case is saved, so a stopped run goes on where it stopped.

The full protocol runs for hours on a small machine. ``python -m blackbox_lime.evaluation.bench ... --resume``
keeps ``checkpoint.jsonl`` in ``--out`` while it runs: a header line with the configuration, then
one line per finished (model, modality, case) with its per-method records and its wall time. The
overlay maps of the cases drawn in ``overlays.png`` are saved next to it as ``checkpoint_overlay_K.npz``,
before their case line. A run that stops (killed, out of time, a crash) loses at most the case it
was on; run the same command again to go on. A half-written last line is dropped. When the run
finishes, the final outputs are written and the checkpoint files are removed.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.outputs import atomic_write_bytes

CHECKPOINT = "checkpoint.jsonl"


class CheckpointError(ValueError):
    """An unfinished run is in the way, or a checkpoint cannot be resumed; the message says what to do."""


def config_difference(first: dict[str, Any], other: dict[str, Any], ignore: tuple[str, ...] = (),
                      defaults: dict[str, Any] | None = None) -> tuple[str, Any, Any] | None:
    """The first option (outside ``ignore``) on which two run configurations differ, compared as saved in
    JSON, with its value in each; None when they agree.

    An option missing from a configuration takes its value in ``defaults``: a run saved before the
    option existed ran with its default.
    """
    base = json.loads(json.dumps(defaults or {}, default=float))
    a, b = ({**base, **json.loads(json.dumps(c, default=float))} for c in (first, other))
    key = next((k for k in dict.fromkeys([*a, *b]) if k not in ignore and a.get(k) != b.get(k)), None)
    return None if key is None else (key, a.get(key), b.get(key))


def case_key(model: str, modality: str, case: int) -> tuple[str, str, int]:
    return (model, modality, int(case))


class Checkpoint:
    """The finished cases of one benchmark run, kept on disk in ``out_dir``."""

    def __init__(self, out_dir: Path, config: dict[str, Any], commit: str, resume: bool,
                 log: Any = print, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / CHECKPOINT
        self.cases: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.commits: list[str] = [commit]
        if self.path.exists():
            if not resume:
                raise CheckpointError(f"{self.out_dir} holds an unfinished benchmark run; add --resume to go on with it, "
                                 "or choose another --out.")
            self._load(config, commit, log)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"config": config, "commit": self.commits[0]}, default=float)]
        lines += [json.dumps(c, default=float) for c in self.cases.values()]
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode())

    def _load(self, config: dict[str, Any], commit: str, log: Any) -> None:
        raw = self.path.read_text().split("\n")
        if raw and raw[-1] == "":
            raw.pop()
        parsed = []
        for i, line in enumerate(raw):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(raw) - 1:
                    raise CheckpointError(f"{self.path} is damaged at line {i + 1}; remove it to start the run afresh.") \
                        from None
                log(f"{self.path}: dropping a half-written last line (that case runs again)")
        if not parsed or "config" not in parsed[0]:
            raise CheckpointError(f"{self.path} has no header line; remove it to start the run afresh.")
        differs = config_difference(parsed[0]["config"], config, defaults=self.defaults)
        if differs is not None:
            key, saved, current = differs
            raise CheckpointError(f"{self.path} was started with {key}={saved!r}, this run has {current!r}; resume "
                                  "with the same options, or choose another --out.")
        self.commits = [parsed[0]["commit"]]
        for c in parsed[1:]:
            self.cases[case_key(c["model"], c["modality"], c["case"])] = c
            if c["commit"] not in self.commits:
                self.commits.append(c["commit"])
        if commit not in self.commits:
            log(f"resuming a run started at commit {self.commits[0] or '?'} with commit {commit or '?'}")
            self.commits.append(commit)
        log(f"resuming: {len(self.cases)} finished cases read from {self.path}")

    def done(self, model: str, modality: str, case: int) -> bool:
        return case_key(model, modality, case) in self.cases

    def add(self, model: str, modality: str, case: int, records: list[dict[str, Any]], wall_s: float,
            overlay: dict[str, Any] | None) -> None:
        """Save one finished case: its overlay maps first, then its line (so a line implies its maps)."""
        entry: dict[str, Any] = {"model": model, "modality": modality, "case": int(case), "records": records,
                                 "wall_s": wall_s, "commit": self.commits[-1], "overlay": None}
        if overlay is not None:
            name = f"checkpoint_overlay_{len(self.cases)}.npz"
            buf = io.BytesIO()
            names = list(overlay["maps"])
            np.savez(buf, image=overlay["image"], mask=overlay["mask"], names=np.array(names),
                     **{f"map_{i}": overlay["maps"][n] for i, n in enumerate(names)})
            atomic_write_bytes(self.out_dir / name, buf.getvalue())
            entry["overlay"] = name
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.cases[case_key(model, modality, case)] = entry

    def records(self, model: str, modality: str, case: int) -> list[dict[str, Any]]:
        return self.cases[case_key(model, modality, case)]["records"]

    def overlay(self, model: str, modality: str, case: int) -> dict[str, Any] | None:
        name = self.cases[case_key(model, modality, case)]["overlay"]
        if name is None:
            return None
        with np.load(self.out_dir / name) as z:
            names = [str(n) for n in z["names"]]
            return {"image": z["image"], "mask": z["mask"], "maps": {n: z[f"map_{i}"] for i, n in enumerate(names)}}

    def wall_s(self) -> float:
        return float(sum(c["wall_s"] for c in self.cases.values()))

    def mean_case_s(self) -> float:
        """The mean time a finished case took, over every part of the run (0 before the first case)."""
        return self.wall_s() / len(self.cases) if self.cases else 0.0

    def commit(self) -> str:
        return ", ".join(self.commits)

    def remove(self) -> None:
        """The run is finished and its outputs are written: drop the checkpoint files."""
        for c in self.cases.values():
            if c["overlay"]:
                (self.out_dir / c["overlay"]).unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
