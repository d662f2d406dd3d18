"""The figures: what each plot function draws (read back from the matplotlib objects), the
files it is saved to, and which cell stands for a method."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.text import Text
from PIL import Image

from analysis import analyse, load_runs, pipeline
from analysis.plots import DPI, choose_per_rate, heatmap, noise_plot, save, training_curves
from analysis.selection import fixed_cells
from analysis.tables import grid
from tests.test_analysis import result, write_run

# final test accuracy per (noise rate, α, ε), two seeds each; ε = -1 is generalised smoothing.
ACC = {
    (0.0, 0.0, 0.0): [0.90, 0.92], (0.0, 0.0, -1.0): [0.91, 0.93], (0.0, 1.0, 0.1): [0.94, 0.96],
    (0.0, 1.0, 0.2): [0.93, 0.93],
    (0.4, 0.0, 0.0): [0.60, 0.64], (0.4, 0.0, -1.0): [0.66, 0.70], (0.4, 1.0, 0.1): [0.72, 0.74],
    (0.4, 1.0, 0.2): [0.80, 0.82],
}
# Noisy validation prefers ε = 0.1 at α = 1 where test accuracy prefers ε = 0.2.
VAL = {(0.4, 1.0, 0.1): 0.70, (0.4, 1.0, 0.2): 0.60, (0.0, 1.0, 0.1): 0.90,
       (0.0, 1.0, 0.2): 0.80}


def write_study(root: Path, with_val: bool = True, dataset: str = "digits") -> Path:
    for (rate, alpha, eps), accs in ACC.items():
        for seed, acc in enumerate(accs):
            val = VAL.get((rate, alpha, eps), acc - 0.1) if with_val else None
            res = result(rate, alpha, eps, seed, acc, best_val_acc=val, dataset=dataset,
                         test_acc_at_best_val=acc if with_val else None)
            res["config"]["dataset.name"] = dataset
            write_run(root / f"r{rate}_a{alpha}_e{eps}" / f"s{seed}", res, epochs=4)
    return root


def panels_of(root: Path):
    _, panels, _ = pipeline.aggregate_runs(load_runs([root]))
    return panels


def assert_legible(fig) -> None:
    """Every piece of text drawn is at least 8 pt."""
    FigureCanvasAgg(fig).draw()
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert sizes and min(sizes) >= 8


def test_heatmap_one_labelled_colour_scale_and_mean_std_n_cells(tmp_path):
    panels = panels_of(write_study(tmp_path))
    items = [(p, grid(p, "final_test_acc")) for p in panels]
    fig = heatmap(items, "digits / cnn / symmetric")
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2
    means = [100 * a for accs in ACC.values() for a in [sum(accs) / 2]]
    for im in images:  # the clean and the 40 % panel on one scale
        assert (im.norm.vmin, im.norm.vmax) == pytest.approx((min(means), max(means)))
    bars = [im.colorbar for im in images if im.colorbar is not None]
    assert len(bars) == 1 and bars[0].ax.get_ylabel() == "final test accuracy (%)"
    clean, noisy = (ax for ax in fig.axes if ax.get_images())
    assert (clean.get_title(), noisy.get_title()) == ("clean", "40% symmetric")
    assert [t.get_text() for t in noisy.get_yticklabels()] == ["-1", "0", "0.1", "0.2"]
    assert noisy.get_ylabel() == "label smoothing ε" and noisy.get_xlabel() == "Mixup α"
    cells = {t.get_text(): t for t in noisy.texts if t.get_text() != "not run"}
    assert [t.get_text() for t in noisy.texts].count("not run") == 4  # grey, not blank
    assert set(cells) == {"68.0\n± 2.8 (n=2)", "62.0\n± 2.8 (n=2)", "73.0\n± 1.4 (n=2)",
                          "81.0\n± 1.4 (n=2)"}
    # Bold: the cell noisy validation picks (its test accuracy is the honest estimate).
    noisy_panel = next(p for p in panels if p.values["noise_rate"] == 0.4)
    pick = noisy_panel.cells.loc[noisy_panel.cells["best_val_acc_mean"].idxmax()]
    bold = [t for t, c in cells.items() if c.get_fontweight() == "bold"]
    assert len(bold) == 1 and bold[0].startswith(f"{100 * pick['final_test_acc_mean']:.1f}\n")
    assert "mean ± std (n seeds)" in fig.get_suptitle()
    assert_legible(fig)


def test_lower_is_better_metrics_are_bright_when_low(tmp_path):
    panel = panels_of(write_study(tmp_path))[1]
    fig = heatmap([(panel, grid(panel, "final_test_ece"))], "x")
    (im,) = [im for ax in fig.axes for im in ax.get_images()]
    assert im.get_cmap().name == "viridis_r"
    assert im.colorbar.ax.get_ylabel() == "test ECE, 15 bins (%)"


def test_save_writes_pdf_and_png_at_print_resolution(tmp_path):
    panel = panels_of(write_study(tmp_path))[0]
    png, pdf = save(heatmap([(panel, grid(panel, "final_test_acc"))], "x"), tmp_path / "f" / "h")
    assert (png.name, pdf.name) == ("h.png", "h.pdf")
    assert DPI >= 200
    with Image.open(png) as image:
        assert image.info["dpi"] == pytest.approx((DPI, DPI), abs=0.01)
    assert pdf.read_bytes()[:5] == b"%PDF-"


def _line(fig, method: str):
    (ax,) = fig.axes
    (line,) = [x for x in ax.get_lines() if x.get_label().startswith(method + " ")]
    return ax, line


def test_noise_plot_picks_each_rate_on_validation_never_on_test(tmp_path):
    chosen = choose_per_rate(panels_of(write_study(tmp_path)))
    ms = chosen[chosen["method"] == "mixup_smoothing"].set_index("noise_rate")
    # Test accuracy would pick ε = 0.2 at 40 % noise (81 %); validation picks ε = 0.1 (73 %).
    assert ms.loc[0.4, "smoothing"] == 0.1 and ms.loc[0.4, "chosen_by"] == "validation"
    # ε = -1 is smoothing too (generalised): chosen against nothing else, it is the only cell.
    sm = chosen[chosen["method"] == "smoothing"]
    assert set(sm["smoothing"]) == {-1.0} and set(sm["chosen_by"]) == {"only"}
    fig = noise_plot("digits / cnn / symmetric", chosen)
    ax, line = _line(fig, "mixup_smoothing")
    assert list(line.get_xdata()) == [0.0, 40.0]
    assert list(line.get_ydata()) == pytest.approx([95.0, 73.0])
    assert "chosen on noisy validation accuracy" in line.get_label()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "40"]
    assert ax.get_xlabel() == "noise rate (%)" and ax.get_ylabel() == "final test accuracy (%)"
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the ± std bands
    assert "never chosen on test" in ax.get_title()
    assert_legible(fig)


def test_noise_plot_without_validation_shows_one_named_fixed_cell(tmp_path):
    panels = panels_of(write_study(tmp_path, with_val=False))
    # The augmentation config's own (α, ε) for mixup_smoothing: 1 and 0.1.
    assert fixed_cells(panels)["mixup_smoothing"] == (1.0, 0.1)
    chosen = choose_per_rate(panels)
    ms = chosen[chosen["method"] == "mixup_smoothing"]
    assert set(ms["smoothing"]) == {0.1} and set(ms["chosen_by"]) == {"fixed"}
    _, line = _line(noise_plot("x", chosen), "mixup_smoothing")
    assert line.get_label() == "mixup_smoothing (α=1, ε=0.1: fixed cell, no validation data)"
    assert list(line.get_ydata()) == pytest.approx([95.0, 73.0])


def test_fixed_cell_without_a_default_in_the_grid_is_the_first_in_order(tmp_path):
    write_study(tmp_path, with_val=False)
    for rate in (0.0, 0.4):
        write_run(tmp_path / f"extra{rate}", result(rate, 0.0, 0.3, 0, 0.5, best_val_acc=None))
    # smoothing's default ε = 0.1 was not run: of ε = -1 and 0.3 (both at every rate), -1.
    assert fixed_cells(panels_of(tmp_path))["smoothing"] == (0.0, -1.0)


def test_training_curves_mean_with_bands_and_seed_counts(tmp_path):
    panel = panels_of(write_study(tmp_path))[1]
    fig = training_curves(panel)
    (ax,) = fig.axes
    labels = [x.get_label() for x in ax.get_lines()]
    assert "mixup_smoothing α=1, ε=0.2 (n=2)" in labels and len(labels) == 4
    line = ax.get_lines()[labels.index("mixup_smoothing α=1, ε=0.2 (n=2)")]
    # metrics.jsonl: test_acc = acc × epoch / 4, mean over the seeds' 0.80 and 0.82.
    assert list(line.get_ydata()) == pytest.approx([81 * e / 4 for e in range(1, 5)])
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 4
    assert ax.get_ylabel() == "test accuracy (%)" and "s.d. over seeds" in ax.get_title()
    assert_legible(fig)


def test_two_studies_into_one_out_list_only_their_own_figures(tmp_path, monkeypatch):
    """Each analysis replaces the folder whole: the second lists (and leaves) only its own."""
    seen = []
    write = pipeline.write_report
    monkeypatch.setattr(pipeline, "write_report",
                        lambda f, path: (seen.append(list(f.figures)), write(f, path))[1])
    out = tmp_path / "out"
    analyse([write_study(tmp_path / "a")], out, quiet=True)
    first_on_disk = {p.relative_to(out) for p in out.rglob("*.png")}
    analyse([write_study(tmp_path / "b", dataset="fashion")], out, quiet=True)
    first, second = seen
    assert first and second
    assert all(p.name.startswith("digits__") for p in first)
    assert all(p.name.startswith("fashion__") for p in second)
    assert {p.name for p in first} == {p.name for p in first_on_disk}
    for p in second:  # written in a staging folder, renamed to `out` once complete
        landed = out / p.parent.name / p.name
        assert p.suffix == ".png" and landed.exists() and landed.with_suffix(".pdf").exists()
    assert {p.name for p in out.rglob("*.png")} == {p.name for p in second}
    names = {p.name for p in second}
    assert {"fashion__cnn__symmetric__final_test_acc__heatmap.png",
            "fashion__cnn__symmetric__acc_vs_noise_rate.png",
            "fashion__cnn__symmetric_0.4__curves.png"} <= names


def test_heatmap_rows_on_the_uniform_mass_axis(tmp_path):
    panel = panels_of(write_study(tmp_path))[1]
    fig = heatmap([(panel, grid(panel, "final_test_acc", "uniform_mass"))], "x")
    (ax,) = [ax for ax in fig.axes if ax.get_images()]
    assert ax.get_ylabel() == "uniform smoothing mass m"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["-1", "0", "0.1", "0.2"]
