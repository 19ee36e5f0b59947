"""FLUX.1's flow-matching objective as pure maths: the noisy latents and velocity target, the noise levels a
draw indexes in the base's schedule, the timestep densities against their closed forms, and the loss weights."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from flexip import FlexIPError
from flexip.denoisers.flux import draw_density, flow_matching_pair, noise_levels
from flexip.denoisers.registry import FLUX
from flexip.training.config import FlowMatchingConfig, TrainConfig

DRAWS = 8192
NORMAL_QUANTILES = {0.1: -1.2815516, 0.25: -0.6744898, 0.5: 0.0, 0.75: 0.6744898, 0.9: 1.2815516}


def test_noisy_latents_lie_on_the_straight_path_and_the_target_is_its_velocity():
    latents = torch.tensor([2.0, 2.0, 2.0]).view(3, 1, 1, 1)
    noise = torch.tensor([-1.0, -1.0, -1.0]).view(3, 1, 1, 1)
    noisy, target = flow_matching_pair(latents, noise, torch.tensor([0.0, 0.25, 1.0]))
    # sigma 0: the latents; 0.25: 0.75 * 2 + 0.25 * -1; 1: the noise. The velocity: -1 - 2.
    assert noisy.flatten().tolist() == [2.0, 1.25, -1.0]
    assert target.flatten().tolist() == [-3.0, -3.0, -3.0]


def test_a_draw_indexes_the_schedules_sigmas_shifted_only_by_a_static_shift():
    u = torch.tensor([0.0, 0.5, 0.999])
    # FLUX.1-dev's schedule shifts by the resolution when sampling: training draws the unshifted levels.
    dev = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    torch.testing.assert_close(noise_levels(dev, u), torch.tensor([1.0, 0.5, 0.001]))
    # A static shift s maps sigma to s * sigma / (1 + (s - 1) * sigma): 3 * 0.5 / 2 at the middle.
    static = FlowMatchEulerDiscreteScheduler(shift=3.0)
    torch.testing.assert_close(noise_levels(static, u), torch.tensor([1.0, 0.75, 0.003 / 1.002]))


def quantiles(draws: torch.Tensor) -> dict[float, float]:
    return {q: torch.quantile(draws, q).item() for q in NORMAL_QUANTILES}


def test_the_logit_normal_density_has_the_closed_forms_quantiles_and_mean():
    settings = FlowMatchingConfig(weighting_scheme="logit_normal", logit_mean=0.5, logit_std=1.5)
    u = draw_density(settings, DRAWS, torch.Generator().manual_seed(0))
    for q, drawn in quantiles(u).items():  # sigmoid(mean + std * z_q)
        assert drawn == pytest.approx(1 / (1 + math.exp(-(0.5 + 1.5 * NORMAL_QUANTILES[q]))), abs=0.02), q
    logits = torch.log(u / (1 - u))
    assert logits.mean().item() == pytest.approx(0.5, abs=0.05)
    assert logits.std().item() == pytest.approx(1.5, abs=0.05)


def test_the_mode_density_is_the_uniform_draws_mapped_through_sd3s_mode_function():
    scale = 1.29
    u = draw_density(FlowMatchingConfig(weighting_scheme="mode", mode_scale=scale), DRAWS, torch.Generator().manual_seed(0))

    def mode(x: float) -> float:  # decreasing in x on [0, 1] for this scale: quantile q of f(U) is f(1 - q)
        return 1 - x - scale * (math.cos(math.pi * x / 2) ** 2 - 1 + x)

    for q, drawn in quantiles(u).items():
        assert drawn == pytest.approx(mode(1 - q), abs=0.02), q
    assert u.min() >= 0 and u.max() <= 1
    assert mode(0.5) == pytest.approx(0.5) and mode(0.25) < 0.75 - 0.1  # it leans to the middle levels


@pytest.mark.parametrize("scheme", ["none", "sigma_sqrt", "cosmap"])
def test_the_other_schemes_draw_uniformly(scheme):
    u = draw_density(FlowMatchingConfig(weighting_scheme=scheme), DRAWS, torch.Generator().manual_seed(0))
    for q, drawn in quantiles(u).items():
        assert drawn == pytest.approx(q, abs=0.02), q


def test_loss_weights_by_scheme():
    sigmas = torch.tensor([0.5, 0.25])
    config = TrainConfig()

    def weight(scheme: str) -> list[float]:
        config.flow_matching.weighting_scheme = scheme
        return FLUX.loss_weight(None, sigmas, config).tolist()

    assert weight("logit_normal") == weight("mode") == weight("none") == [1.0, 1.0]
    assert weight("sigma_sqrt") == [4.0, 16.0]  # sigma^-2
    assert weight("cosmap") == pytest.approx([4 / math.pi, 2 / (math.pi * 0.625)])  # 2 / (pi (1 - 2s + 2s^2))


def test_min_snr_gamma_is_refused_on_flux_naming_the_flow_matching_weighting():
    config = TrainConfig(min_snr_gamma=5.0)
    with pytest.raises(FlexIPError, match="config min_snr_gamma: 5.0") as error:
        FLUX.check_objective(config)
    assert "flow_matching.weighting_scheme" in str(error.value) and "\n" not in str(error.value)
    FLUX.check_objective(TrainConfig())


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [("weighting_scheme", "lognorm", "is not one of logit_normal"), ("logit_std", 0.0, "above 0"),
     ("mode_scale", 2.0, "in [-1, 1.75]"), ("guidance", -1.0, "0 or positive"), ("logit_mean", math.nan, "finite")],
)  # fmt: skip
def test_flow_matching_settings_are_checked_in_one_line(key, value, said):
    config = TrainConfig()
    setattr(config.flow_matching, key, value)
    with pytest.raises(FlexIPError, match=f"config flow_matching.{key}") as error:
        config.flow_matching.check()
    assert said in str(error.value)


def test_predict_packs_the_latents_calls_the_transformer_as_fluxpipeline_does_and_unpacks():
    from diffusers import FluxPipeline

    from flexip.tiny import FLUX_T5_WIDTH, WIDTH, tiny_flux_transformer

    torch.manual_seed(0)
    model = tiny_flux_transformer().eval()
    noisy, text, pooled = torch.randn(2, 4, 4, 6), torch.randn(2, 5, FLUX_T5_WIDTH), torch.randn(2, WIDTH)
    sigmas = torch.tensor([0.3, 0.8])
    config = TrainConfig()
    config.flow_matching.guidance = 2.5
    with torch.no_grad():
        predicted = FLUX.predict(model, noisy, sigmas, text, None, {"pooled_projections": pooled}, config)
        # FluxPipeline's call: latents packed 2x2 into a 2 x 3 grid of tokens with their ids, zero text ids.
        packed = model(
            hidden_states=FluxPipeline._pack_latents(noisy, 2, 4, 4, 6), timestep=sigmas,
            guidance=torch.full((2,), 2.5), pooled_projections=pooled, encoder_hidden_states=text,
            txt_ids=torch.zeros(5, 3), img_ids=FluxPipeline._prepare_latent_image_ids(2, 2, 3, "cpu", torch.float32),
        ).sample  # fmt: skip
        config.flow_matching.guidance = 5.0
        other_guidance = FLUX.predict(model, noisy, sigmas, text, None, {"pooled_projections": pooled}, config)
    assert predicted.shape == noisy.shape
    torch.testing.assert_close(predicted, FluxPipeline._unpack_latents(packed, 4, 6, 1), rtol=0, atol=0)
    # The first token holds the top-left 2x2 of every channel: feature 4c + 2y + x is channel c's (y, x).
    assert predicted[0, 0, 0, 1] == packed[0, 0, 1] and predicted[0, 0, 1, 0] == packed[0, 0, 2]
    assert predicted[0, 1, 0, 0] == packed[0, 0, 4]
    assert not torch.allclose(predicted, other_guidance)
