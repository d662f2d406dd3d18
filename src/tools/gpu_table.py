"""The table of GPU figures (src.tools.bench_gpu) in docs/performance.md: one row per
measurement, its target and its figure, the card named above it; without a report, every
row stands empty ("not measured")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.tools.bench_check import TOLERANCE

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"
BEGIN, END = "<!-- bench-gpu table: begin -->", "<!-- bench-gpu table: end -->"
# The targets: images/s of the suite's epoch, and the batched launcher's speed-up.
TARGETS = {"throughput_512": 85_000.0, "throughput_128": 30_000.0, "batched_launcher": 10.0}


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _ips(f: dict[str, Any]) -> str:
    return f"{f['suite_images_per_s']:,.0f} images/s"


def _eval(f: dict[str, Any]) -> str:
    return "-" if f.get("eval_images_per_s") is None else f"{f['eval_images_per_s']:,.0f} images/s"


def _launcher(f: dict[str, Any]) -> str:
    return (f"{f['wall_speedup']:.1f}x wall ({f['separate_wall_s']:.0f} s separate, "
            f"{f['batched_wall_s']:.0f} s batched); {f['train_speedup']:.1f}x training time")


def _tests(f: dict[str, Any]) -> str:
    return ", ".join(f"{n} {k}" for k, n in f.items()) or "no summary line"


def _projection(f: dict[str, Any]) -> str:
    gpu = (f"{_duration(f['projected_gpu_s'])} on this card" if "projected_gpu_s" in f
           else "no GPU projection (batch-128 figures missing)")
    return (f"{gpu}, {f['runs']} runs one at a time; plan=true's own (eager, fp32): "
            f"{_duration(f['plan_estimate_s'])}")


@dataclass(frozen=True)
class Row:
    """One row: the step it reads, what is measured, the target, the figure from the step's
    figures, and whether they meet the target (None: no target)."""

    step: str
    label: str
    target: str
    figure: Callable[[dict[str, Any]], str]
    meets: Callable[[dict[str, Any]], bool | None] = lambda f: None


def _at_bare(f: dict[str, Any]) -> bool:
    return f["overhead_vs_bare"] <= TOLERANCE


ROWS: list[Row] = [
    Row("throughput_512", "PreAct ResNet-18, CIFAR-10, bf16, batch 512, `--compile` (CUDA "
        "graphs): the suite's epoch", ">= 85,000 images/s", _ips,
        lambda f: f["suite_images_per_s"] >= TARGETS["throughput_512"]),
    Row("throughput_128", "the same at `trainer=cifar` (batch 128), CUDA graphs "
        "(`--compile reduce-overhead`)", ">= 30,000 images/s", _ips,
        lambda f: f["suite_images_per_s"] >= TARGETS["throughput_128"]),
    Row("throughput_128", "its evaluation forward over the training split (batch 1024, "
        "padded, CUDA graphs)", "-", _eval),
    Row("throughput_512", "the suite's step over its bare loop, batch 512", "<= 5 %",
        lambda f: f"{f['overhead_vs_bare']:+.1%}", _at_bare),
    Row("throughput_128", "the suite's step over its bare loop, batch 128", "<= 5 %",
        lambda f: f"{f['overhead_vs_bare']:+.1%}", _at_bare),
    Row("batched_launcher", "16 `cnn` runs on CIFAR-10: `hydra/launcher=batched` against 16 "
        "separate runs (default launcher)", ">= 10x", _launcher,
        lambda f: f["wall_speedup"] >= TARGETS["batched_launcher"]),
    Row("gpu_tests", "tests/test_fastpath.py, test_multiseed.py, test_gpu_readiness.py on the "
        "GPU", "all pass", _tests,
        lambda f: not f.get("failed") and not f.get("error") and not f.get("errors")),
    Row("projection_mixup_paper_cifar10", "projected wall time of "
        "`+experiment=mixup_paper_cifar10 trainer.compile=true`", "-", _projection),
    Row("projection_answer_gpu", "projected wall time of `+experiment=answer_gpu "
        "trainer.compile=true`", "-", _projection),
]


def _cells(row: Row, step: dict[str, Any] | None) -> tuple[str, str]:
    """(figure, meets target) of a row."""
    if step is None:
        return "not measured", "-"
    if step["status"] != "ok":
        failed = step["status"] in ("failed", "timeout")
        return step["status"] + (" (see its log)" if failed else ""), "no" if failed else "-"
    meets = row.meets(step["figures"])
    return row.figure(step["figures"]), "-" if meets is None else ("yes" if meets else "no")


def render_table(report: dict[str, Any] | None) -> str:
    """The Markdown block for docs/performance.md: the card, then one row per measurement."""
    steps = (report or {}).get("steps", {})
    if report is None:
        head = ("Not measured yet: no GPU has run `make bench-gpu` since it was written. "
                "Every row below is empty until one does.")
    else:
        m = report["machine"]
        dry = "DRY RUN on the CPU (checks the script; not figures): " if report["dry_run"] \
            else ""
        head = (f"{dry}card **{report['card']}**, torch {m['torch']}, Python {m['python']}, "
                f"{m['cpu_count']} CPU cores; {report['created_at']}; `{report['command']}`; "
                f"{report['wall_s']:.0f} s in all.")
    lines = [BEGIN, head, "", "| measurement | target | figure | meets target |",
             "| --- | --- | --- | --- |"]
    for row in ROWS:
        figure, meets = _cells(row, steps.get(row.step))
        lines.append(f"| {row.label} | {row.target} | {figure} | {meets} |")
    return "\n".join([*lines, END]) + "\n"


def update_doc(table: str, doc: Path = DOC) -> None:
    """Put `table` between the markers of `doc` (appended where there are none)."""
    text = doc.read_text() if doc.is_file() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + table.rstrip("\n") + after
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + table
    doc.write_text(text)
