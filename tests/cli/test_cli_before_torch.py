"""The command line answers every mistake it can see without models before torch is imported: ranges, forms,
block names read from the adapter's file, files that must or must not exist, the output's writability.

The cases run in one fresh Python (torch is already imported in this one), each through `main(argv)`.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

TINY = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"

# Each case's command calls main(argv); the script reports the exit code, stderr's lines and whether torch
# was imported by then.
SCRIPT = """
import contextlib, io, json, sys
from flexip.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue().strip().splitlines(), "torch" in sys.modules])
print(json.dumps(results))
"""


def test_mistakes_are_answered_before_torch_is_imported(tmp_path, tiny_models):
    reference = tmp_path / "dog.png"
    Image.new("RGB", (32, 32), "white").save(reference)
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"an earlier result")
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "contact_sheet.png").write_bytes(b"an earlier sweep")
    adapter = str(tiny_models.adapter)
    out = str(tmp_path / "new.png")

    def generate(*extra):
        return ["generate", "--reference", str(reference), "--prompt", "a dog", "--out", out, *extra]

    def calibrate(*extra, data=str(tiny_models.benchmark), out=str(tmp_path / "calibrated")):
        return ["calibrate", "--adapter", adapter, "--data", data, "--out", out, *extra]

    (tmp_path / "other.jsonl").write_text('{"subject": "a", "picture": "a.png"}\n')
    (tmp_path / "taken.mp4").write_bytes(b"an earlier clip")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "frame_020.png").write_bytes(b"an earlier, longer clip's frame")

    flux_adapter = tmp_path / "flux-adapter"  # the SD adapter's files, its config naming FLUX.1
    shutil.copytree(tiny_models.adapter, flux_adapter)
    config = json.loads((flux_adapter / "flexip_config.json").read_text())
    (flux_adapter / "flexip_config.json").write_text(json.dumps({**config, "base_family": "flux"}))

    damaged = tmp_path / "damaged-adapter"
    damaged.mkdir()
    (damaged / "flexip_config.json").write_bytes((tiny_models.adapter / "flexip_config.json").read_bytes())
    (damaged / "flexip_adapter.safetensors").write_bytes(b"not safetensors")

    def clip(*extra, out=str(tmp_path / "clip.mp4"), adapter=("--adapter", adapter)):
        return ["generate", "--reference", str(reference), "--prompt", "a dog", *adapter, "--motion-adapter",
                str(tiny_models.motion_adapter), "--out", out, *extra]  # fmt: skip

    cases = [  # (argv, what the one line names)
        (generate("--preservation", "2"), "--preservation=2"),
        (generate("--preservation", "0.9:0.3:wavy"), "wavy"),
        (generate("--preservation", "sideways=0.5", "--adapter", adapter), "'sideways'"),
        (generate("--preservation", "up.block_9=0.5", "--adapter", adapter), "'block_9'"),
        (generate("--scale", "down=0,side=1", "--adapter", adapter), "'side'"),
        (generate("--preservation", "sideways=0.5"), "'sideways'"),  # the embedded model's adapter file
        (generate("--preservation", "0.5", "--gate", "0.5"), "--preservation 0.5 and --gate 0.5: give one"),
        (generate("--gate", "2"), "--gate=2"),
        (generate("--gate", "0.2,0.4"), "flexip sweep --gate 0.2,0.4"),
        (generate("--gate", "sideways=0.5", "--adapter", adapter), "--gate: unknown block 'sideways'"),
        (["sweep", "--reference", str(reference), "--prompt", "a", "--out", str(tmp_path / "new-sweep"),
          "--preservation", "0,1", "--gate", "0,1"], "give one of them"),
        (generate("--scale", "11"), "--scale=11"),
        (generate("--steps", "0"), "--steps=0"),
        (generate("--seed", "-1"), "--seed=-1"),
        (generate("--guidance", "nan"), "--guidance"),
        (generate("--dtype", "float16", "--adapter", str(tmp_path / "missing")), "missing"),
        (generate("--reference-weights", "0"), "sum to 0"),
        (["generate", "--reference", str(reference), "--prompt", "a", "--out", str(taken)], "already exists"),
        (["generate", "--reference", str(reference), "--prompt", "a", "--out", str(reference)], "--reference"),
        (["generate", "--reference", str(tmp_path / "none.png"), "--prompt", "a", "--out", out], "none.png"),
        (["sweep", "--reference", str(reference), "--prompt", "a", "--out", str(tmp_path / "sweep")], "--overwrite"),
        (["demo", "--scale", "-1", "--out", str(tmp_path / "demo")], "--scale=-1"),
        (["serve", "--adapter", str(tmp_path / "missing")], "missing"),
        (["train", "--config", str(TINY), "--set", "batch_size=0", "--output-dir", str(tmp_path / "run")], "batch_size"),
        (["train", "--config", str(TINY), "--set", "learning_rat=1e-4"], "learning_rate"),
        (["train", "--config", str(tmp_path / "none.yaml")], "none.yaml"),
        (calibrate("--points", "3"), "--points=3"),
        (calibrate("--seeds", "0,0"), "twice"),
        (calibrate("--seeds", "a"), "--seeds"),
        (calibrate("--pairs", "0"), "--pairs=0"),
        (calibrate("--guidance", "nan"), "--guidance"),
        (calibrate("--adapter", str(tmp_path / "missing")), "missing"),
        (calibrate(data=str(tmp_path / "none.jsonl")), "none.jsonl"),
        (calibrate(data=str(tmp_path / "other.jsonl")), "other.jsonl"),
        (calibrate(out=str(tmp_path / "sweep")), "already exists"),
        (calibrate(out=str(tiny_models.adapter / "calibrated")), "inside --adapter"),
        (generate("--frames", "4"), "--frames 4 is for clips: add --motion-adapter"),
        (generate("--dial-over", "frames"), "--dial-over frames is for clips"),
        (["generate", "--reference", str(reference), "--prompt", "a", "--out", str(tmp_path / "a.mp4")], "names a clip"),
        (["sweep", "--reference", str(reference), "--prompt", "a", "--out", str(tmp_path / "new-sweep"),
          "--clip-format", "gif"], "--clip-format gif is for clips"),
        (clip("--frames", "0"), "--frames 0: give a whole number from 1 to 32"),
        (clip("--frames", "33"), "motion_max_seq_length"),
        (clip("--frames", "four"), "--frames four: give a whole number"),
        (clip("--fps", "0"), "--fps 0: give a whole number 1 or more"),
        (clip(out=str(tmp_path / "clip.avi")), "unknown type '.avi'"),
        (clip(out=str(tmp_path / "clip.png")), "names an image"),
        (clip(out=str(tmp_path / "taken.mp4")), "already exists"),
        (clip(out=str(tmp_path / "frames")), "already holds frame_020.png"),
        (clip("--preservation", "0.5", "--dial-over", "frames"), "--dial-over frames: --preservation 0.5"),
        (clip(adapter=()), "needs --adapter"),
        (clip(adapter=("--adapter", str(flux_adapter))), "run on Stable Diffusion 1.5 and SDXL"),
        (clip("--motion-adapter", adapter), "config.json"),
        (clip(adapter=("--adapter", str(damaged))), "cannot read its gate.logits"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([argv for argv, _ in cases])],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    for (argv, named), (code, lines, torch_imported) in zip(cases, json.loads(done.stdout), strict=True):
        assert code == 2, (argv, lines)
        assert len(lines) == 1 and named in lines[0], (argv, lines)
        assert not torch_imported, (argv, lines)
