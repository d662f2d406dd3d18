"""Evaluation on held-out data: loss, accuracy and expected calibration error, on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
