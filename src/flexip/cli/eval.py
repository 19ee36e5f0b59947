"""`flexip eval generate|score|rank|curve`: the DreamBench-style evaluation of docs/method.md §5."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..errors import FlexIPError
from ..evaluation.benchmarks import BENCHMARKS, load_benchmark
from ..evaluation.generate_config import Sampling
from ..evaluation.methods import (
    FLUX_IP_ADAPTER_ENCODER,
    IP_ADAPTER_FILES,
    METHODS,
    FlexIPMethod,
    build_method,
)
from ..evaluation.results import SCORES_FILE, SUMMARY_FILE
from ..evaluation.score_config import IDENTITY_MODES, ScoreConfig
from ..settings.numbers import DTYPES


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} of an earlier run (without it they are refused)",
    )


def _refuse_earlier_outputs(folder: Path, names: list[str], overwrite: bool, command: str) -> None:
    """Refuse, before any work, to replace files an earlier run wrote, unless --overwrite says so."""

    if folder.exists() and not folder.is_dir():
        raise FlexIPError(f"--out {folder} is a file; give a directory for the {command} outputs")
    found = [name for name in names if (folder / name).exists()]
    if found and not overwrite:
        raise FlexIPError(
            f"{folder} already holds {', '.join(found)} from an earlier `flexip eval {command}`; pass --overwrite "
            "to replace them, or choose another --out"
        )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate methods on DreamBench-style benchmarks: generate, score, rank, curve",
        description="Generate a method's images for a benchmark, score them (DINO-I, CLIP-I, CLIP-T, "
        "CLIP-IQA, "
        "Aesthetic), rank methods by mRank, and plot identity against prompt fidelity over the dial.",
    )
    commands = parser.add_subparsers(dest="eval_command", metavar="STEP", required=True)
    _register_generate(commands)
    _register_score(commands)
    _register_rank(commands)
    _register_curve(commands)


def _register_generate(commands) -> None:
    p = commands.add_parser(
        "generate",
        help="make a method's images for a benchmark (resumable; run under `accelerate launch` to share the "
        "work)",
        description="Generate the images of one method for every (subject, prompt, seed, dial value) of a "
        "benchmark into OUT/images, with every setting in OUT/generation.json and every image listed in "
        "OUT/manifest.jsonl. Images already there are kept: run the same command again to finish an "
        "interrupted run. Zero-shot protocol: one reference image per subject, DreamBench's unique token dropped.",
    )
    _add_benchmark_options(p)
    _add_method_options(p)
    _add_per_method_options(p)
    _add_sampling_options(p)
    p.set_defaults(run=run_generate)


def _add_benchmark_options(p: argparse.ArgumentParser) -> None:
    """Which benchmark, and which of its subjects and prompts."""

    p.add_argument(
        "--benchmark", choices=BENCHMARKS, default="dreambench", help="benchmark layout (default: dreambench)"
    )
    p.add_argument(
        "--data", required=True, help="the benchmark's directory (dreambench, dreambench++) or JSONL file"
    )
    p.add_argument("--subjects", type=_names, help="comma-separated subjects to keep (default: all)")
    p.add_argument("--max-prompts", type=int, help="keep the first N prompts of each subject")
    p.add_argument(
        "--reference-image", help="dreambench: which image of each subject is the reference (default: 00.jpg)"
    )


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """Which method, where its results go, and the base it runs on."""

    p.add_argument(
        "--method",
        choices=list(METHODS),
        required=True,
        help="flexip; ip-adapter (diffusers' load_ip_adapter: h94's layout on SD1.5 and SDXL, XLabs' on FLUX.1); "
        "base (the base model alone, no reference: the floor; sd is another name for it, recorded as sd); "
        "folder (images made elsewhere, --images)",
    )
    p.add_argument(
        "--out", required=True, help="results directory; its name labels the method in tables and plots"
    )
    p.add_argument(
        "--base",
        help="SD1.5, SDXL or FLUX.1 base: hub id or diffusers directory (default: for flexip the base the adapter "
        "records, otherwise SD v1.5); its family sets the sampler and the default guidance",
    )


def _add_per_method_options(p: argparse.ArgumentParser) -> None:
    """What one method reads: flexip's adapter and dial, ip-adapter's weights, folder's images."""

    p.add_argument("--adapter", help="flexip: the adapter directory")
    p.add_argument(
        "--preservation",
        type=_floats,
        default=FlexIPMethod.preservation,
        help="flexip: dial values, e.g. 0.3,0.5,0.7",
    )
    p.add_argument(
        "--scale",
        type=_floats,
        default=FlexIPMethod.scale,
        help="flexip: the adapters' strength s (one value, default 1); ip-adapter: scales, e.g. 0.3,0.6,1",
    )
    p.add_argument("--ip-adapter", help="ip-adapter: hub id or directory, e.g. h94/IP-Adapter")
    p.add_argument(
        "--ip-adapter-subfolder",
        help="ip-adapter: subfolder (default: the base's family's in h94/IP-Adapter: models on SD1.5, sdxl_models "
        "on SDXL; on FLUX.1 none, as in XLabs-AI/flux-ip-adapter)",
    )
    p.add_argument(
        "--ip-adapter-weight",
        help=f"ip-adapter: weight file (default: {IP_ADAPTER_FILES['sd15'][1]} on SD1.5, "
        f"{IP_ADAPTER_FILES['sdxl'][1]} on SDXL, {IP_ADAPTER_FILES['flux'][1]} on FLUX.1; IP-Adapter Plus is "
        "ip-adapter-plus_sd15.safetensors / ip-adapter-plus_sdxl_vit-h.safetensors)",
    )
    p.add_argument(
        "--ip-adapter-image-encoder",
        help="ip-adapter on FLUX.1: the CLIP image encoder, hub id or directory (default: "
        f"{FLUX_IP_ADAPTER_ENCODER}, XLabs'; on SD the IP-Adapter's own image_encoder/)",
    )
    p.add_argument("--images", help="folder: a directory of <subject>/<NN>/<name>.png, NN the prompt's index")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    """How every method samples: seeds, steps, guidance, dtype."""

    sampling = Sampling()
    p.add_argument(
        "--seeds",
        type=int,
        default=sampling.seeds,
        help=f"images per prompt and dial value, seeds 0..N-1 (default: {sampling.seeds})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=sampling.steps,
        help=f"denoising steps, DDIM (on FLUX.1 its flow-matching Euler; default: {sampling.steps})",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=sampling.guidance,
        help="guidance scale (default: the base family's: 7.5 on SD1.5 and SDXL, classifier-free; 3.5 on FLUX.1, "
        "its guidance embedding's, with true CFG off)",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=sampling.dtype,
        help=f"model dtype (default: {sampling.dtype}; float16 on GPUs, bfloat16 for FLUX.1)",
    )


def run_generate(args: argparse.Namespace) -> int:
    from ..evaluation.generate import generate

    sampling = Sampling(
        base=args.base, seeds=args.seeds, steps=args.steps, guidance=args.guidance, dtype=args.dtype
    )
    method = build_method(
        args.method,
        sampling,
        adapter=args.adapter,
        preservation=args.preservation,
        scale=args.scale,
        ip_adapter=args.ip_adapter,
        ip_adapter_subfolder=args.ip_adapter_subfolder,
        ip_adapter_weight=args.ip_adapter_weight,
        ip_adapter_image_encoder=args.ip_adapter_image_encoder,
        images=args.images,
    )
    benchmark = load_benchmark(
        args.benchmark, args.data, args.subjects, args.max_prompts, args.reference_image
    )
    made = generate(method, benchmark, args.out)
    print(f"{args.out}: made {made} images in this process")
    return 0


def _register_score(commands) -> None:

    defaults = ScoreConfig(aesthetic_head="")
    p = commands.add_parser(
        "score",
        help="per-image metrics and their summaries for results directories",
        description="Score every image of each results directory: RESULTS/scores.jsonl (per image) and "
        "RESULTS/summary.csv + summary.md (means per dial value and subject category). Backbones are hub ids "
        "or local paths, and are recorded in every file.",
    )
    p.add_argument("results", nargs="+", help="results directories made by `flexip eval generate`")
    p.add_argument(
        "--aesthetic-head",
        required=True,
        help="the LAION aesthetic head: sac+logos+ava1-l14-linearMSE.pth or a safetensors copy",
    )
    p.add_argument(
        "--clip-model",
        default=defaults.clip_model,
        help=f"CLIP-I and CLIP-T (default: {defaults.clip_model})",
    )
    p.add_argument(
        "--dino-model", default=defaults.dino_model, help=f"DINO-I (default: {defaults.dino_model})"
    )
    p.add_argument(
        "--iqa-model", default=defaults.iqa_model, help=f"CLIP-IQA (default: {defaults.iqa_model})"
    )
    p.add_argument(
        "--aesthetic-model",
        default=defaults.aesthetic_model,
        help=f"the CLIP the aesthetic head reads (default: {defaults.aesthetic_model})",
    )
    p.add_argument(
        "--identity",
        choices=IDENTITY_MODES,
        default=defaults.identity,
        help="compare identity with the reference used (default), or average over all real images",
    )
    _add_overwrite(p, "scores.jsonl and summary.csv/.md")
    p.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..evaluation.score import Scorer, check_results, score_results

    for directory in args.results:
        check_results(directory, args.identity)
        outputs = [SCORES_FILE, f"{SUMMARY_FILE}.csv", f"{SUMMARY_FILE}.md"]
        _refuse_earlier_outputs(Path(directory), outputs, args.overwrite, "score")
    config = ScoreConfig(
        aesthetic_head=args.aesthetic_head,
        clip_model=args.clip_model,
        dino_model=args.dino_model,
        iqa_model=args.iqa_model,
        aesthetic_model=args.aesthetic_model,
        identity=args.identity,
    )
    scorer = Scorer(config, PartialState().device)
    for directory in args.results:
        score_results(directory, scorer)
        print((Path(directory) / "summary.md").read_text())
    return 0


def _register_rank(commands) -> None:
    p = commands.add_parser(
        "rank",
        help="the mRank table of results directories and published numbers",
        description="Rank every method (each dial value of a results directory is one entry) on each of the "
        "five metrics, 1 = best, ties sharing their mean rank, and average: mRank (the FlexIP paper's Table 1). CSV inputs hold "
        "published numbers: columns method,CLIP-T,CLIP-I,DINO-I,CLIP-IQA,Aesthetic.",
    )
    p.add_argument(
        "inputs", nargs="+", help="scored results directories and/or CSV files of published numbers"
    )
    p.add_argument("--out", help="directory for mrank.csv and mrank.md (default: beside the first input)")
    _add_overwrite(p, "mrank.csv and mrank.md")
    p.set_defaults(run=run_rank)


def _need_plotting() -> None:
    """rank and curve draw with matplotlib, which an inference install does not bring."""

    if importlib.util.find_spec("matplotlib") is None:
        raise FlexIPError("this step draws figures with matplotlib: `pip install 'flexip[eval]'` first")


def run_rank(args: argparse.Namespace) -> int:
    _need_plotting()
    from ..evaluation.report import rank_table

    out = Path(args.out) if args.out else Path(args.inputs[0]).resolve().parent
    _refuse_earlier_outputs(out, ["mrank.csv", "mrank.md"], args.overwrite, "rank")
    print(rank_table(args.inputs, out))
    return 0


def _register_curve(commands) -> None:
    p = commands.add_parser(
        "curve",
        help="identity vs prompt fidelity over the dial, and how smoothly each method moves",
        description="Plot DINO-I and CLIP-I against CLIP-T, one labelled point per preservation value or "
        "scale (tradeoff.png/.svg), and the largest jump between neighbouring dial values as a share of the range "
        "covered (smoothness.png/.svg; needs 3+ dial values). Numbers in tradeoff.csv.",
    )
    p.add_argument("results", nargs="+", help="scored results directories")
    p.add_argument("--out", help="directory for the figures (default: beside the first results directory)")
    _add_overwrite(p, "the figures and tradeoff.csv")
    p.set_defaults(run=run_curve)


def run_curve(args: argparse.Namespace) -> int:
    _need_plotting()
    from ..evaluation.report import curve_figures

    out = Path(args.out) if args.out else Path(args.results[0]).resolve().parent
    figures = [f"{name}.{kind}" for name in ("tradeoff", "smoothness") for kind in ("png", "svg")]
    _refuse_earlier_outputs(out, [*figures, "tradeoff.csv"], args.overwrite, "curve")
    print(curve_figures(args.results, out))
    return 0
