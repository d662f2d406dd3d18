"""The report's calibration section: raw ECE and ECE after temperature scaling side by side,
which one to read (after TS only with clean validation labels), and the rows where TS made
test ECE worse flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import analyse
from tests.test_analysis import result, write_run

# (raw ECE, ECE after TS) per noise rate and (α, ε), every method's only cell. Clean: TS helps
# everywhere. 40 % noise: the temperature fitted on noisy validation labels makes it worse for
# three methods (as measured for ERM under label noise, 34.4 % -> 36.2 %) and better for one.
ECE = {
    (0.0, 0.0, 0.0): (0.05, 0.02), (0.0, 1.0, 0.0): (0.08, 0.03),
    (0.0, 0.0, 0.1): (0.10, 0.02), (0.0, 1.0, 0.1): (0.12, 0.01),
    (0.4, 0.0, 0.0): (0.344, 0.362), (0.4, 1.0, 0.0): (0.30, 0.35),
    (0.4, 0.0, 0.1): (0.40, 0.41), (0.4, 1.0, 0.1): (0.45, 0.33),
}


@pytest.fixture(scope="module")
def section(tmp_path_factory) -> str:
    """Section 7 of the report of a clean and a 40 % noisy panel, two seeds a cell."""
    root = tmp_path_factory.mktemp("study")
    for (rate, alpha, eps), (raw, ts) in ECE.items():
        for seed in (0, 1):
            res = result(rate, alpha, eps, seed, 0.8 + 0.01 * seed, final_test_ece=raw,
                         final_test_ece_ts=ts)
            if rate == 0.0:
                res["noise"], res["config"]["noise.name"] = "none", "none"
            write_run(root / f"r{rate}_a{alpha}_e{eps}" / f"s{seed}", res)
    report = (analyse([root], quiet=True) / "report.md").read_text()
    return report.split("## 7.")[1].split("## Figures")[0]


def rows(section: str) -> list[dict[str, str]]:
    """The calibration table's rows, by column name."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            for line in lines[2:]]


def test_raw_and_ts_ece_stand_side_by_side(section):
    table = rows(section)
    header = list(table[0])
    assert header.index("ECE after TS") == header.index("ECE (raw)") + 1
    assert header.index("TS change") == header.index("ECE after TS") + 1
    erm = next(r for r in table if "0.4" in r["setting"] and r["method"] == "none")
    assert (erm["ECE (raw)"], erm["ECE after TS"]) == ("34.40%", "36.20%")


def test_ts_is_read_only_where_validation_labels_are_clean(section):
    for r in rows(section):
        clean = r["setting"].endswith("no noise")
        assert r["read"] == ("ECE after TS (validation labels clean)" if clean
                             else "raw ECE (validation labels noisy)")


def test_rows_where_ts_made_ece_worse_are_flagged(section):
    flags = {(r["setting"].endswith("no noise"), r["method"]): r["TS change"]
             for r in rows(section)}
    assert flags[(False, "none")] == "+1.80 pp (worse after TS)"
    assert flags[(False, "mixup")] == "+5.00 pp (worse after TS)"
    assert flags[(False, "smoothing")] == "+1.00 pp (worse after TS)"
    assert flags[(False, "mixup_smoothing")] == "-12.00 pp"  # better: not flagged
    assert not [f for (clean, _), f in flags.items() if clean and "worse" in f]
    assert "TS made test ECE worse in 3 of 8 rows with both numbers: 3 under label noise." \
        in section


def test_the_note_says_why_and_never_calls_ts_the_number_to_read_unconditionally(section):
    note = " ".join(section.split())
    assert "calibrates the model to the noise, not to the clean test labels" in note
    assert "so TS can make test ECE worse" in note
    assert "**Without label noise** (validation labels clean)" in note
    assert "read the **raw ECE**" in note
    assert "Which number is read: the **temperature-scaled ECE**" not in note


def test_the_ts_table_note_warns_that_ts_fits_the_noise(tmp_path):
    root = tmp_path / "study"
    for seed in (0, 1):
        write_run(root / f"s{seed}", result(0.4, 0.0, 0.0, seed, 0.8))
    tables = analyse([root], quiet=True) / "tables"
    (ts,) = tables.glob("*final_test_ece_ts.md")
    text = " ".join(ts.read_text().split())
    assert "trustworthy only without noise" in text and "can be worse than raw ECE" in text
    (raw,) = tables.glob("*final_test_ece.md")
    assert "removes the part one scalar can fix only where the validation labels are clean" \
        in " ".join(raw.read_text().split())


def test_runs_without_ts_ece_read_raw_and_flag_nothing(tmp_path: Path):
    """A study whose runs recorded no TS ECE reads raw ECE and flags nothing."""
    root = tmp_path / "study"
    for seed in (0, 1):
        write_run(root / f"s{seed}", result(0.0, 0.0, 0.0, seed, 0.8, final_test_ece_ts=None,
                                            noise="none"))
    report = (analyse([root], quiet=True) / "report.md").read_text()
    (row,) = rows(report.split("## 7.")[1].split("## Figures")[0])
    assert (row["ECE after TS"], row["TS change"]) == ("n/a", "n/a")
    assert row["read"] == "raw ECE (no TS recorded)"
