"""Evaluation on held-out data: loss, accuracy and calibration, on the device.

Calibration under label noise needs more than one number. A model fitted to noisy labels is
under-confident on clean test labels by construction (its targets put mass on wrong classes),
so raw ECE mixes noise robustness with miscalibration. Besides the 15-bin ECE (Guo et al.
2017) each evaluation reports the negative log-likelihood, the Brier score, the ECE split into
its over-confident part (bins where confidence exceeds accuracy) and under-confident part, and
ECE after temperature scaling (Guo et al. 2017) with the temperature fitted on the noisy
validation split: what is left after one scalar recalibration is miscalibration proper.

The suite computes these itself rather than through torchmetrics: they run on the device for
K stacked members at once and are read back in one host transfer per split; a test checks
the ECE against torchmetrics' MulticlassCalibrationError.

Memorisation (the fraction of corrupted training labels the model predicts) needs a forward
over the training split at every evaluated epoch: on CIFAR-10 that is 45-50k images beside
the 10k of test and validation, an estimated +35-45 % of a GPU run's wall time.
`trainer.memorization_subset: N` estimates it on a fixed random subset of N training images
instead (memorization_indices: drawn once from its own seed, the same images at every epoch
and in every run of the same split), a binomial estimate whose standard error is at most
0.5 / sqrt(corrupted images in the subset); null (the default) uses them all.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The seed of the memorisation subset: its own, not the training or noise seed, so every run
# of a study is measured on the same images.
MEMORIZATION_SEED = 0


def memorization_indices(size: int | None, n: int) -> np.ndarray | None:
    """The sorted indices of the `size` training images (of `n`) the memorisation metrics
    are estimated on; None for all of them (null, or a size of at least the split)."""
    if size is None or int(size) >= n:
        return None
    rng = np.random.default_rng(MEMORIZATION_SEED)
    return np.sort(rng.permutation(n)[:int(size)])


def calibration_error(confidence: torch.Tensor, correct: torch.Tensor,
                      n_bins: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """The ECE's over- and under-confident parts, equal-width bins: (sum over bins with
    conf > acc, sum over bins with acc > conf) of |acc_b - conf_b| n_b / N. ECE is their sum."""
    bins = (confidence * n_bins).ceil().long().clamp_(1, n_bins) - 1
    conf_sum = torch.zeros(n_bins, device=confidence.device).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(n_bins, device=confidence.device).index_add_(0, bins, correct.float())
    gap = (conf_sum - acc_sum) / max(len(confidence), 1)
    return gap.clamp(min=0).sum(), (-gap).clamp(min=0).sum()


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor,
                               n_bins: int = 15) -> torch.Tensor:
    """ECE with equal-width confidence bins (Guo et al. 2017): sum_b |acc_b - conf_b| n_b / N."""
    bins = (confidence * n_bins).ceil().long().clamp_(1, n_bins) - 1
    conf_sum = torch.zeros(n_bins, device=confidence.device).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(n_bins, device=confidence.device).index_add_(0, bins, correct.float())
    return (acc_sum - conf_sum).abs().sum() / max(len(confidence), 1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean cross entropy, accuracy and 15-bin ECE of float logits against hard labels."""
    logits = logits.float()
    probs = logits.softmax(-1)
    confidence, pred = probs.max(-1)
    correct = pred == labels
    out = torch.stack([
        F.cross_entropy(logits, labels),
        correct.sum().float(),
        expected_calibration_error(confidence, correct),
    ]).tolist()  # one host transfer for all three
    # Accuracy from the exact count, not a float32 mean.
    return {"loss": out[0], "acc": int(out[1]) / max(len(labels), 1), "ece": out[2]}


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Brier score and the ECE's over- and under-confident parts (NLL is the metrics' loss)."""
    logits = logits.float()
    probs = logits.softmax(-1)
    confidence, pred = probs.max(-1)
    over, under = calibration_error(confidence, pred == labels)
    brier = (probs - F.one_hot(labels, probs.shape[-1]).float()).pow(2).sum(-1).mean()
    out = torch.stack([brier, over, under]).tolist()
    return {"brier": out[0], "ece_over": out[1], "ece_under": out[2]}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 50) -> float:
    """The temperature T > 0 minimising the NLL of logits / T (Guo et al. 2017), by LBFGS on
    log T (so T stays positive)."""
    logits = logits.float().detach()
    log_t = torch.zeros((), device=logits.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().exp())


def temperature_scaled_ece(test_logits: torch.Tensor, test_labels: torch.Tensor,
                           val_logits: torch.Tensor, val_labels: torch.Tensor
                           ) -> dict[str, float]:
    """ECE of the test logits after the temperature fitted on the validation split."""
    t = fit_temperature(val_logits, val_labels)
    return {"temperature": t,
            "ece_ts": classification_metrics(test_logits.float() / t, test_labels)["ece"]}
