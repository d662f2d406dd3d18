"""A panel's label names what parts it from the study's other panels, and nothing that follows
from its dataset, model or noise (a dataset's normalisation, a model's widths)."""

from __future__ import annotations

import pandas as pd

from analysis.aggregate import _label, distinguishing

PKEYS = ["dataset", "model", "noise", "noise_rate", "noise_label_set", "config.dataset.mean",
         "config.model.hidden_sizes", "config.trainer.lr"]


def panels(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=PKEYS)


def test_keys_that_follow_from_the_head_are_left_out():
    summary = panels([
        ("mnist", "mlp", "symmetric", 0.6, None, "[0.1307]", "[512, 256]", 0.1),
        ("fashion_mnist", "mlp", "symmetric", 0.6, None, "[0.286]", "[512, 256]", 0.1),
        ("fashion_mnist", "cnn", "symmetric", 0.6, None, "[0.286]", None, 0.1)])
    assert distinguishing(summary, PKEYS) == []
    values = dict(zip(PKEYS, summary.iloc[1]))
    assert _label(values, []) == "fashion_mnist / mlp / symmetric 0.6"


def test_a_key_that_parts_panels_of_one_head_is_shown():
    summary = panels([
        ("mnist", "mlp", "symmetric", 0.6, None, "[0.1307]", "[512, 256]", 0.1),
        ("mnist", "mlp", "symmetric", 0.6, None, "[0.1307]", "[512, 256]", 0.05),
        ("fashion_mnist", "mlp", "symmetric", 0.6, None, "[0.286]", "[64]", 0.1)])
    assert distinguishing(summary, PKEYS) == ["config.trainer.lr"]
    # Now the widths part two mnist panels as well (a key shown once parts its panels: the
    # ones after it are judged within them).
    summary.loc[2, ["dataset", "config.dataset.mean"]] = ["mnist", "[0.1307]"]
    assert distinguishing(summary, PKEYS) == ["config.model.hidden_sizes", "config.trainer.lr"]


def test_panels_that_would_print_alike_get_labels_of_their_own():
    from analysis.aggregate import make_panels

    keys = PKEYS + ["mixup_alpha", "smoothing"]
    # Two learning rates that print alike (6 significant digits): shown as printed, both
    # labels would read lr=1, and one panel's tables and figures would overwrite the other's.
    rows = [("mnist", "mlp", "symmetric", 0.6, None, "[0.1307]", "[64]", 1.0000001),
            ("mnist", "mlp", "symmetric", 0.6, None, "[0.1307]", "[64]", 1.0000002)]
    summary = panels(rows).assign(mixup_alpha=0.0, smoothing=0.0, _panel=[0, 1])
    labels = [p.label for p in make_panels(summary.copy(), summary, keys)]
    assert labels == ["mnist / mlp / symmetric 0.6 / panel 1",
                      "mnist / mlp / symmetric 0.6 / panel 2"]
