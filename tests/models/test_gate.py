"""The dynamic weight gate (docs/method.md §2.4): its starting values, and a dial that stays covered in
training."""

from __future__ import annotations

import pytest
import torch

from flexip.models.gate import COVERAGE_BINS, DynamicWeightGate, coverage_counts, coverage_shares


def test_gate_starts_at_the_decided_values_and_covers_the_dial_in_training():
    gate = DynamicWeightGate(image_init=0.8, video_init=0.2, noise_std=1.5)
    modality = torch.tensor([0] * 2000 + [1] * 2000)
    gate.eval()
    assert torch.allclose(gate(modality[:1]), torch.tensor([0.8]))
    assert gate.learned_values() == pytest.approx({"image": 0.8, "video": 0.2})
    gate.train()
    g = gate(modality, generator=torch.Generator().manual_seed(0)).detach()
    image, video = g[:2000], g[2000:]
    assert image.mean() > 0.6 and video.mean() < 0.4
    assert g.min() < 0.05 and g.max() > 0.95  # the ends of the dial are visited in training


def test_coverage_counts_each_modality_per_tenth_of_the_dial():
    g = torch.tensor([0.0, 0.05, 0.1, 0.55, 0.999, 1.0, 0.3])
    modality = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    counts = coverage_counts(g, modality)
    assert counts.tolist() == [[2, 1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 1, 0, 0, 0, 2]]
    shares = coverage_shares(counts)
    assert shares["image"][:2] == [pytest.approx(2 / 3, abs=1e-4), pytest.approx(1 / 3, abs=1e-4)]
    assert shares["video"][9] == 0.5 and sum(shares["video"]) == pytest.approx(1.0)
    assert coverage_shares(torch.zeros(2, COVERAGE_BINS, dtype=torch.long))["image"] == [0.0] * COVERAGE_BINS


def _coverage_after_drift(uniform_share: float, steps: int = 3000) -> tuple[DynamicWeightGate, dict]:
    """Train the gate alone on a loss that pushes g(video) down and g(image) up, as the demo run's gradient did
    (and harder); return the gate and the coverage of the last 500 steps."""
    gate = DynamicWeightGate(image_init=0.8, video_init=0.2, noise_std=1.5, uniform_share=uniform_share).train()
    optimizer = torch.optim.Adam(gate.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    modality = torch.tensor([0, 1]).repeat(64)
    counts = torch.zeros(2, COVERAGE_BINS, dtype=torch.long)
    for step in range(steps):
        g = gate(modality, generator=generator)
        loss = (g * torch.where(modality == 1, 1.0, -1.0)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= steps - 500:
            counts += coverage_counts(g, modality)
    return gate, coverage_shares(counts)


def test_every_tenth_of_the_dial_keeps_both_modalities_however_far_the_logits_drift():
    gate, shares = _coverage_after_drift(uniform_share=0.2)
    learned = gate.learned_values()
    assert learned["video"] < 0.01 and learned["image"] > 0.99  # the bias is still learned, far past the start
    # Stated share: 80% of the uniform share's tenth (0.2 / 10), whatever the logits; 32,000 samples per
    # modality put the measured share within about 5% of the 2% it must exceed.
    floor = 0.8 * 0.2 / COVERAGE_BINS
    for modality in ("image", "video"):
        assert min(shares[modality]) >= floor, (modality, shares[modality])


def test_without_the_uniform_share_the_drift_empties_the_far_end_of_the_dial():
    # What the uniform share is for: the logit noise alone stops covering the dial once the logits drift.
    _, shares = _coverage_after_drift(uniform_share=0.0)
    assert sum(shares["video"][5:]) < 0.01 and sum(shares["image"][:5]) < 0.01


def test_the_uniform_share_leaves_inference_and_the_random_stream_unchanged():
    gate = DynamicWeightGate(uniform_share=0.5)
    plain = DynamicWeightGate(uniform_share=0.0)
    modality = torch.tensor([0, 1, 1, 0])
    assert torch.equal(gate.eval()(modality), plain.eval()(modality))
    first, second = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    gate.train()(modality, generator=first)
    plain.train()(modality, generator=second)
    assert torch.equal(torch.rand(4, generator=first), torch.rand(4, generator=second))
