"""Measuring identity and prompt following along the raw gate, and the calibration fitted to them.

A round measures a set of gates: for each pair and seed, one batch of images at those gates from one starting
noise (a sweep costs one call), scored at once. The first round takes `START_GATES`; each later one the
midpoints of the curve's longest pieces (`curve.next_gates`), half as many as the curve has pieces, so that
gates gather where the scores move, until `plan.points` gates are measured (or no piece can be split). A unit's
scores depend only on its pair, seed and gates, and the next round's gates only on the means so far, so a rerun
that finds units in the work folder reaches the same calibration bit for bit.

Every process runs every round: the units left are split between them (accelerate), each appends what it scores
to its own part of the work folder, and all of them read all parts once every process is done with the round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from accelerate import PartialState
from tqdm import tqdm

from ..settings.calibration import Calibration, CalibrationPoint
from .curve import fit_dial_map, next_gates
from .pairs import PairSet
from .plan import START_GATES, CalibrationPlan
from .scorers import Scorer
from .work import Measured, WorkFolder


@dataclass
class Measurement:
    calibration: Calibration
    made: int  # images this process generated (the rest were in the work folder, or another process's)


def measure(
    pipe, pairs: PairSet, scorer: Scorer, plan: CalibrationPlan, work: WorkFolder, state: PartialState
) -> Measurement:
    """Measure `pairs` on `pipe` (a FlexIP pipeline: `pipe.flexip`, `gate=`) with `scorer`, resuming what
    `work` holds, and fit the map."""
    rounds, gates, made = [], START_GATES, 0
    progress = tqdm(
        total=plan.images(len(pairs)),
        desc="calibrating",
        unit="image",
        disable=not state.is_local_main_process,
    )
    while gates:
        made += _measure_round(pipe, pairs, scorer, plan, work, state, gates, progress)
        rounds.append(gates)
        points = _means(work.records(), rounds, len(pairs), plan.seeds)
        gates = _next_round(points, plan.points)
    progress.close()
    dial_map = fit_dial_map(*zip(*((point.gate, point.identity, point.prompt) for point in points)))
    calibration = Calibration(
        dial=list(dial_map.dial), gate=list(dial_map.gate), points=points, identity_scorer=scorer.identity_name,
        prompt_scorer=scorer.prompt_name, pair_set=pairs.description, pairs=len(pairs), seeds=list(plan.seeds),
        images=len(pairs) * len(plan.seeds) * len(points),
    )  # fmt: skip
    return Measurement(calibration, made)


def _next_round(points: list[CalibrationPoint], wanted: int) -> tuple[float, ...]:
    """The gates to measure next, none once `wanted` are measured: half as many as the curve has pieces, so
    that a round sees the last one's answer before it splits more."""
    missing = wanted - len(points)
    if missing <= 0:
        return ()
    gates, identity, prompt = zip(*((point.gate, point.identity, point.prompt) for point in points))
    return tuple(next_gates(gates, identity, prompt, min(missing, max(1, (len(points) - 1) // 2))))


def _measure_round(pipe, pairs: PairSet, scorer: Scorer, plan: CalibrationPlan, work: WorkFolder,
                   state: PartialState, gates: tuple[float, ...], progress: tqdm) -> int:  # fmt: skip
    """Measure every unit of the round at `gates` that the work folder lacks; returns the images made here."""
    done = work.records()
    progress.n = sum(len(record.gates) for record in done.values())
    progress.refresh()
    todo = [
        (pair, seed) for pair in range(len(pairs)) for seed in plan.seeds if (pair, seed, gates) not in done
    ]
    state.wait_for_everyone()  # every process has listed the units left before any adds to them
    made, encoded = 0, {}
    with state.split_between_processes(todo) as mine:
        for index, seed in mine:
            pair = pairs.pairs[index]
            if index not in encoded:  # units come pair by pair: one reference encoded at a time
                encoded = {index: pipe.flexip.encode_reference(pair.reference)}
            images = pipe(
                pair.prompt, reference=encoded[index], gate=list(gates), num_inference_steps=plan.steps,
                guidance_scale=plan.guidance, generator=torch.Generator("cpu").manual_seed(seed),
            ).images  # fmt: skip
            identity = scorer.identity(images, [pair.reference] * len(images))
            prompt = scorer.prompt(images, [pair.prompt] * len(images))
            record = Measured(index, seed, gates, tuple(map(float, identity)), tuple(map(float, prompt)))
            work.append(state.process_index, record)
            made += len(images)
            progress.update(len(images))
    state.wait_for_everyone()
    return made


def _means(
    done: dict, rounds: list[tuple[float, ...]], pairs: int, seeds: tuple[int, ...]
) -> list[CalibrationPoint]:
    """Each measured gate's mean scores over pairs and seeds, by gate; always summed in the same order."""
    scores: dict[float, list[tuple[float, float]]] = {}
    for gates in rounds:
        for pair in range(pairs):
            for seed in seeds:
                record = done[(pair, seed, gates)]
                for gate, identity, prompt in zip(gates, record.identity, record.prompt):
                    scores.setdefault(gate, []).append((identity, prompt))
    return [
        CalibrationPoint(
            gate, float(np.mean([s[0] for s in scores[gate]])), float(np.mean([s[1] for s in scores[gate]]))
        )
        for gate in sorted(scores)
    ]
