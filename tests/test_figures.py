"""The figures: what each plot function draws (read back from the matplotlib objects), the
files it is saved to, and which cell stands for a method."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.text import Text
from PIL import Image

from analysis import analyse, load_runs, pipeline
from analysis.plots import DPI, choose_per_rate, heatmap, noise_plot, save, training_curves
from analysis.selection import fixed_cells
from analysis.tables import caption, grid, notes, to_markdown
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


def grid_axes(fig) -> list:
    """The heatmap's panels (not its colourbar), in order."""
    return [ax for ax in fig.axes if ax.get_xlabel() == "Mixup α"]


def meshes(fig) -> list[QuadMesh]:
    """The heatmap panels' coloured cells, one mesh per panel, in panel order."""
    FigureCanvasAgg(fig).draw()
    return [c for ax in grid_axes(fig) for c in ax.collections if isinstance(c, QuadMesh)]


def face(mesh: QuadMesh, i: int, j: int) -> np.ndarray:
    """The RGB colour of cell (row i, column j) of a panel."""
    rows, cols = mesh.get_array().shape
    return mesh.get_facecolors()[i * cols + j][:3]


def hand_se(acc: dict) -> float:
    """The pooled standard error of a cell mean, in pp: √(mean over cells of s.d.² / n)."""
    terms = [statistics.stdev(a) ** 2 / len(a) for a in acc.values() if len(a) > 1]
    return 100 * math.sqrt(sum(terms) / len(terms))


def test_heatmap_colours_the_difference_from_erm_on_a_scale_of_the_replicate_noise(tmp_path):
    panels = panels_of(write_study(tmp_path))
    fig = heatmap([(p, grid(p, "final_test_acc")) for p in panels], "digits / cnn / symmetric")
    clean, noisy = meshes(fig)
    half = 3 * hand_se(ACC)  # 3 s.e. of a cell mean, pooled over both panels' cells
    for mesh in (clean, noisy):  # one scale for both panels, centred on each one's ERM
        assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((-half, half))
    # Rows ε = -1, 0, 0.1, 0.2; columns α = 0, 1. Noisy ERM (row 1, α = 0) prints 62.0: its
    # own colour is the neutral centre, and every other run cell of that panel is better (blue).
    assert np.ptp(face(noisy, 1, 0)) < 0.01
    for i, j in ((0, 0), (2, 1), (3, 1)):
        r, _, b = face(noisy, i, j)
        assert b > r + 0.3
    # ε = -1 at 40 % (68.0) is 6 pp better than ERM, beyond the scale: the darkest blue.
    assert face(noisy, 0, 0) == pytest.approx(np.array(clean.cmap(1.0)[:3]))
    # Not run (α = 1, ε = -1): grey, and said in words.
    assert face(noisy, 0, 1) == pytest.approx([0.88] * 3)
    (bar,) = [m.colorbar for m in (clean, noisy) if m.colorbar is not None]
    assert bar.ax.get_ylabel() == "difference from ERM (pp)"
    assert bar.extend == "both"  # values beyond ±3 s.e. are clipped, and the bar shows it
    caption = fig.get_supxlabel().replace("\n", " ")
    assert f"full scale ±{half:.2f} pp = 3 s.e. of a cell mean" in caption
    assert "difference from the panel's ERM (α=0, ε=0)" in caption
    clean_ax, noisy_ax = grid_axes(fig)
    assert noisy_ax.get_title().split("\n") == ["40% symmetric", "n = 2 runs (2 seeds)"]
    assert clean_ax.get_title().split("\n")[0] == "clean"
    assert [t.get_text() for t in clean_ax.get_yticklabels()] == ["-1", "0", "0.1", "0.2"]
    assert clean_ax.get_ylabel() == "label smoothing ε" and noisy_ax.get_xlabel() == "Mixup α"
    assert noisy_ax.get_ylabel() == ""  # one ε axis for the row, on its first panel
    cells = {t.get_text(): t for t in noisy_ax.texts if t.get_text() != "not run"}
    assert [t.get_text() for t in noisy_ax.texts].count("not run") == 4
    # Every cell holds 2 runs: n is said once, above the panel, not in every cell.
    assert set(cells) == {"68.0\n± 2.8", "62.0\n± 2.8", "73.0\n± 1.4", "81.0\n± 1.4"}
    # Bold: the cell noisy validation picks (its test accuracy is the honest estimate).
    noisy_panel = next(p for p in panels if p.values["noise_rate"] == 0.4)
    pick = noisy_panel.cells.loc[noisy_panel.cells["best_val_acc_mean"].idxmax()]
    bold = [t for t, c in cells.items() if c.get_fontweight() == "bold"]
    assert len(bold) == 1 and bold[0].startswith(f"{100 * pick['final_test_acc_mean']:.1f}\n")
    assert fig.get_suptitle() == "digits / cnn / symmetric: final test accuracy (%)"
    assert_legible(fig)


def test_lower_is_better_metrics_are_blue_when_below_erm(tmp_path):
    panel = panels_of(write_study(tmp_path))[1]
    fig = heatmap([(panel, grid(panel, "final_test_ece"))], "x")
    (mesh,) = meshes(fig)
    assert mesh.cmap.name.startswith("RdBu_r")
    # ECE = (1 - acc) / 10: ERM (row 1, α = 0) 3.8 %; α = 1, ε = 0.2 (row 3) 1.9 %, lower.
    r, _, b = face(mesh, 3, 1)
    assert b > r + 0.3
    assert mesh.colorbar.ax.get_ylabel() == "difference from ERM (pp)"


def write_cells(root: Path, values: dict, metric: str, seeds=(0, 1), draws=(0,)) -> Path:
    """A 40 % panel with `metric` (a fraction) per (α, ε) given, one run per seed × draw."""
    for (alpha, eps), value in values.items():
        for seed in seeds:
            for draw in draws:
                res = result(0.4, alpha, eps, seed, 0.7 + 0.01 * seed + 0.002 * draw,
                             noise_seed=draw, **{metric: value})
                write_run(root / f"a{alpha}_e{eps}" / f"s{seed}_d{draw}", res)
    return root


def test_no_colour_and_no_bold_where_every_value_prints_alike(tmp_path):
    # Over-confident ECE of 0.01 % to 0.04 %: every cell prints 0.0, as in a real study's
    # over-confident part under noise. Different in the data, alike to the reader.
    values = {(0.0, 0.0): 0.0004, (0.0, 0.1): 0.0001, (1.0, 0.0): 0.0003, (1.0, 0.1): 0.0002}
    (panel,) = panels_of(write_cells(tmp_path, values, "final_test_ece_over"))
    g = grid(panel, "final_test_ece_over")
    assert g.best.to_numpy().sum() == 1  # the data has one lowest cell ...
    fig = heatmap([(panel, g)], "x")
    (mesh,) = meshes(fig)
    colours = mesh.get_facecolors()[:, :3]
    assert len(colours) == 4 and np.ptp(colours, axis=0).max() == 0  # ... all one colour
    assert np.ptp(colours[0]) < 0.01  # and that colour is neutral
    (ax,) = grid_axes(fig)
    assert {t.get_text() for t in ax.texts} == {"0.0\n± 0.0"}
    assert all(t.get_fontweight() != "bold" for t in ax.texts)  # no winner among equals
    caption = fig.get_supxlabel().replace("\n", " ")
    assert "No colour: every value prints alike" in caption and "No bold" in caption


def test_a_best_value_printed_alike_by_two_cells_is_not_bold(tmp_path):
    # 0.011 % and 0.012 %: the lowest is unique in the data, but both print 0.0 here and 0.01
    # in the tables; the other cells print 0.2 and 0.3 and stay coloured.
    values = {(0.0, 0.0): 0.002, (0.0, 0.1): 0.00011, (1.0, 0.0): 0.003, (1.0, 0.1): 0.00012}
    (panel,) = panels_of(write_cells(tmp_path, values, "final_test_ece_over"))
    g = grid(panel, "final_test_ece_over")
    fig = heatmap([(panel, g)], "x")
    (mesh,) = meshes(fig)
    assert np.ptp(mesh.get_facecolors()[:, :3], axis=0).max() > 0.3
    (ax,) = grid_axes(fig)
    assert all(t.get_fontweight() != "bold" for t in ax.texts)
    table = to_markdown(g)
    assert "**" not in table and table.count("0.01 ± 0.00") == 2
    assert "No bold: the lowest mean is shared by several cells" in notes(g)


def test_n_counts_seeds_times_noise_draws_in_titles_captions_and_legends(tmp_path):
    values = {(0.0, 0.0): 0.1, (0.0, 0.1): 0.2, (1.0, 0.0): 0.3, (1.0, 0.1): 0.4}
    write_cells(tmp_path, values, "final_test_ece", draws=(0, 1))
    (panel,) = panels_of(tmp_path)
    reps = "n = 4 runs (2 seeds × 2 noise draws)"
    fig = heatmap([(panel, grid(panel, "final_test_acc"))], "x")
    (ax,) = grid_axes(fig)
    assert " ".join(ax.get_title().split()) == f"40% symmetric {reps}"
    assert reps in caption(grid(panel, "final_test_acc"), panel)  # the tables' caption
    curves = training_curves(panel)
    assert f"{reps} per line" in curves.axes[0].get_title().replace("\n", " ")
    chosen = choose_per_rate([panel])
    assert set(chosen["seeds"]) == {2} and set(chosen["noise_draws"]) == {2}
    title = noise_plot("x", chosen).axes[0].get_title().replace("\n", " ")
    assert f"over runs, {reps} per point" in title


def test_cells_short_of_the_full_crossing_say_so_and_show_their_own_n(tmp_path):
    values = {(0.0, 0.0): 0.1, (0.0, 0.1): 0.2, (1.0, 0.0): 0.3, (1.0, 0.1): 0.4}
    write_cells(tmp_path, values, "final_test_ece", draws=(0, 1))
    shutil.rmtree(tmp_path / "a1.0_e0.1" / "s1_d1")
    (panel,) = panels_of(tmp_path)
    fig = heatmap([(panel, grid(panel, "final_test_acc"))], "x")
    (ax,) = grid_axes(fig)
    title = " ".join(ax.get_title().split())
    assert title == "40% symmetric n = 3–4 runs (of 2 seeds × 2 noise draws)"
    texts = [t.get_text() for t in ax.texts]
    assert sum(t.endswith("(n=3)") for t in texts) == 1
    assert sum(t.endswith("(n=4)") for t in texts) == 3


def test_without_replicates_the_scale_is_the_largest_difference_and_says_so(tmp_path):
    values = {(0.0, 0.0): 0.10, (0.0, 0.1): 0.12, (1.0, 0.0): 0.05, (1.0, 0.1): 0.11}
    (panel,) = panels_of(write_cells(tmp_path, values, "final_test_ece", seeds=(0,)))
    fig = heatmap([(panel, grid(panel, "final_test_ece"))], "x")
    (mesh,) = meshes(fig)
    assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((-5.0, 5.0))  # 5 % vs ERM's 10 %
    assert "the largest difference (no s.e.: one run per cell)" in \
        fig.get_supxlabel().replace("\n", " ")


def png_size(fig, path: Path) -> tuple[int, int]:
    (png, _) = save(fig, path, ("png", "pdf"))
    with Image.open(png) as image:
        return image.size


def test_heatmap_canvas_is_compact_and_long_titles_do_not_widen_it(tmp_path):
    panels = panels_of(write_study(tmp_path / "runs"))
    items = [(p, grid(p, "final_test_acc")) for p in panels]
    width, height = png_size(heatmap(items, "digits / cnn / symmetric"), tmp_path / "short")
    # Two panels of 4 ε × 2 α cells: about 5 × 3.5 inches at 200 dpi, wider than high as the
    # two grids side by side are.
    assert 800 <= width <= 1300 and 500 <= height <= 800 and width > height
    long = "digits / cnn / symmetric / " + "trainer.lr=0.05 / " * 12
    wide, high = png_size(heatmap(items, long), tmp_path / "long")
    assert abs(wide - width) <= 4 and high - height < 200  # the title wraps, downwards
    fig = heatmap(items, "x")
    FigureCanvasAgg(fig).draw()
    cells = sum(ax.get_window_extent().width * ax.get_window_extent().height
                for ax in grid_axes(fig))
    assert cells / (fig.bbox.width * fig.bbox.height) > 0.3  # not a third of the canvas


def test_a_large_grid_of_three_panels_stays_within_a_page(tmp_path):
    """eps_alpha_grid's shape: 5 ε × 6 α, three noise rates side by side."""
    alphas, eps = (0.0, 0.1, 0.2, 0.4, 1.0, 2.0), (-0.1, 0.0, 0.05, 0.1, 0.2)
    for rate in (0.0, 0.2, 0.4):
        for a in alphas:
            for e in eps:
                for seed in (0, 1):
                    write_run(tmp_path / f"r{rate}_a{a}_e{e}" / f"s{seed}",
                              result(rate, a, e, seed, 0.8 + 0.01 * seed + a / 100))
    items = [(p, grid(p, "final_test_acc")) for p in panels_of(tmp_path)]
    width, height = png_size(heatmap(items, "digits / cnn / symmetric"), tmp_path / "h")
    assert width <= 2700 and height <= 900  # 13.5 × 4.5 inches: a landscape page
    assert 2.0 <= width / height <= 5.0  # three 6 × 5 grids in a row: about 3.6 : 1
    # Validation accuracy here is test accuracy - 5 pp, the same for every ε: the clean and
    # 20 % panels' picks tie five ways, and a tie has no bold winner.
    fig = heatmap(items, "x")
    clean, mild, noisy = grid_axes(fig)
    assert not [t for t in clean.texts + mild.texts if t.get_fontweight() == "bold"]
    assert len([t for t in noisy.texts if t.get_fontweight() == "bold"]) == 1
    assert "No bold: several cells tie for the best validation accuracy." in \
        " ".join(fig.get_supxlabel().split())


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
    assert ax.get_ylabel() == "test accuracy (%)"
    assert "s.d. over runs, n = 2 runs (2 seeds) per line" in ax.get_title().replace("\n", " ")
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
    (ax,) = grid_axes(fig)
    assert ax.get_ylabel() == "uniform smoothing mass m"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["-1", "0", "0.1", "0.2"]


def test_figures_drawn_by_several_workers_are_the_ones_drawn_alone(tmp_path, monkeypatch):
    """The cores share the figures (forked workers); the files are byte for byte the ones
    drawn one after another, in the same order, and where forking fails the figures are
    drawn here."""
    root = write_study(tmp_path / "runs")
    pools = []

    class Pool(pipeline.ProcessPoolExecutor):
        def __init__(self, workers, **kwargs):
            pools.append(workers)
            super().__init__(workers, **kwargs)

    monkeypatch.setattr(pipeline, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    analyse([root], tmp_path / "shared", quiet=True, figure_formats=("png",))
    assert pools == [2]  # drawn by two workers
    monkeypatch.setattr(pipeline, "MAX_FIGURE_WORKERS", 1)
    analyse([root], tmp_path / "alone", quiet=True, figure_formats=("png",))
    assert pools == [2]  # one worker: drawn here
    monkeypatch.undo()
    pngs = sorted((tmp_path / "alone" / "plots").glob("*.png"))
    assert len(pngs) >= 4 and [p.name for p in pngs] == \
        sorted(p.name for p in (tmp_path / "shared" / "plots").glob("*.png"))
    for p in pngs:
        assert p.read_bytes() == (tmp_path / "shared" / "plots" / p.name).read_bytes()

    def no_fork(method):
        raise OSError("no processes here")

    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(pipeline.multiprocessing, "get_context", no_fork)
    jobs = [pipeline.FigureJob(_mark, (i, -1, str(tmp_path / "marks")), tmp_path / f"n{i}")
            for i in range(4)]
    (tmp_path / "marks").mkdir()
    assert pipeline.draw_all(jobs, ("png",)) == [[]] * 4
    assert sorted(p.name for p in (tmp_path / "marks").iterdir()) == ["0", "1", "2", "3"]


def _mark(i: int, parent: int, folder: str) -> None:
    """A figure that marks that it was drawn (the first one also signals `parent`)."""
    import os
    import signal
    import time

    Path(folder, str(i)).touch()
    if i == 0 and parent > 0:
        os.kill(parent, signal.SIGTERM)
    time.sleep(0.3)


def test_a_stop_while_workers_draw_cancels_the_figures_not_started(tmp_path, monkeypatch):
    """SIGTERM while forked workers draw: the figures being drawn finish, the others are
    never started, and the analysis stops as the signal policy says (Stopped)."""
    import os

    from src.run.signals import SIGNALS, Stopped

    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    jobs = [pipeline.FigureJob(_mark, (i, os.getpid(), str(tmp_path)), tmp_path / f"f{i}")
            for i in range(20)]
    SIGNALS.install()
    try:
        with pytest.raises(Stopped):
            pipeline.draw_all(jobs, ("png",))
    finally:
        SIGNALS.restore()
    assert 1 <= len(list(tmp_path.iterdir())) <= 6  # of 20: the rest were cancelled
