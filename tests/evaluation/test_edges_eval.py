"""`flexip eval` under user mistakes and hand-edited files, a table of them: each ends in exit code 2 and one
line on stderr naming the file or value, without a traceback and before any image is made or scored; files
saved by spreadsheets and editors (a UTF-8 BOM, CRLF line ends) are read as they were meant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fixtures import need_shared
from flexip.cli import main
from flexip.evaluation.benchmarks import load_benchmark
from flexip.evaluation.score import SUMMARY_HEADER, check_results

HEADER = "method,CLIP-T,CLIP-I,DINO-I,CLIP-IQA,Aesthetic\n"
PROVENANCE = ["jsonl", "reference", "clip", "dino", "clip", "clip", "head.safetensors"]


def _image(path: Path, colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """Whole inputs each case copies and breaks: a DreamBench copy, a DreamBench++ copy, a JSONL benchmark, a
    scored results directory (its images, manifest, generation settings and summary) and published numbers."""
    root = tmp_path_factory.mktemp("eval-inputs")
    bench = root / "dreambench"
    for subject in ("dog", "can"):
        for number in ("00", "01"):
            _image(bench / "images" / subject / f"{number}.jpg")
    spec = {"classes": {"dog": "dog", "can": "can"}, "live_subjects": ["dog"],
            "live_subject_prompts": ["a {unique_token} {class_token} in the jungle"],
            "object_prompts": ["a {unique_token} {class_token} on a table"]}  # fmt: skip
    (bench / "prompts.json").write_text(json.dumps(spec))

    plus = root / "dreambench++"
    _image(plus / "images" / "animal" / "00.jpg")
    (plus / "captions" / "animal").mkdir(parents=True)
    (plus / "captions" / "animal" / "00.txt").write_text("corgi\na corgi on the moon\n")

    _image(root / "bench" / "a.png")
    (root / "bench" / "bench.jsonl").write_text(
        _jsonl([{"subject": "mug", "reference": "a.png", "prompt": "a mug"}])
    )

    results = root / "results"
    reference = str(bench / "images" / "dog" / "00.jpg")
    rows = []
    for dial in (0.0, 1.0):
        for index, prompt in enumerate(("a dog in the jungle", "a dog on the beach")):
            image = f"images/preservation-{dial:g}/dog/{index:02d}/0.png"
            _image(results / image, (int(255 * dial), 100, 50 * index))
            rows.append({"image": image, "subject": "dog", "category": "live", "prompt_index": index,
                         "prompt": prompt, "reference": reference, "real_images": [reference], "sample": "0",
                         "dial": dial})  # fmt: skip
    (results / "manifest.jsonl").write_text(_jsonl(rows))
    settings = {"format_version": 1, "label": "results", "method": "flexip", "dial_name": "preservation",
                "benchmark": {"name": "dreambench"}}  # fmt: skip
    (results / "generation.json").write_text(json.dumps(settings))
    summary = [",".join(SUMMARY_HEADER)]
    for dial in (0.0, 1.0):
        metrics = [0.25 + dial / 10, 0.8, 0.6 + dial / 5, 0.5, 5.5]
        summary.append(",".join(map(str, ["results", "preservation", dial, "all", 2, *metrics, *PROVENANCE])))
    (results / "summary.csv").write_text("\n".join(summary) + "\n")
    (root / "published.csv").write_text(HEADER + "Ours,0.3,0.8,0.6,0.7,6.0\nTheirs,0.2,0.9,0.7,0.6,5.0\n")
    (root / "a-file").write_text("not a folder")
    return root


def copy(good: Path, tmp: Path, name: str) -> Path:
    source = good / name
    target = tmp / name
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy(source, target)
    return target


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_manifest(results: Path, change) -> None:
    """`change(rows)` edits the list of the manifest's rows in place."""
    rows = [json.loads(line) for line in (results / "manifest.jsonl").read_text().splitlines()]
    change(rows)
    (results / "manifest.jsonl").write_text("".join(row if isinstance(row, str) else json.dumps(row) + "\n"
                                                    for row in rows))  # fmt: skip


def edit_summary(results: Path, change) -> None:
    """`change(lines)` edits summary.csv's lines (the header first) in place."""
    lines = (results / "summary.csv").read_text().splitlines()
    change(lines)
    (results / "summary.csv").write_text("\n".join(lines) + "\n")


# --- argv builders: each takes (good inputs, this case's folder) and returns the command line ----------------


def generate(data: Path, out: Path, *extra: str, benchmark: str = "dreambench") -> list[str]:
    return ["eval", "generate", "--benchmark", benchmark, "--data", str(data), "--method", "sd", "--base",
            str(out.parent / "no-base"), "--seeds", "1", "--steps", "2", "--out", str(out), *extra]  # fmt: skip


def broken_dreambench(change):
    def argv(good: Path, tmp: Path) -> list[str]:
        bench = copy(good, tmp, "dreambench")
        change(bench)
        return generate(bench, tmp / "out")

    return argv


def broken_plus(change):
    def argv(good: Path, tmp: Path) -> list[str]:
        plus = copy(good, tmp, "dreambench++")
        change(plus)
        return generate(plus, tmp / "out", benchmark="dreambench++")

    return argv


def jsonl_benchmark(text: str | bytes):
    def argv(good: Path, tmp: Path) -> list[str]:
        bench = copy(good, tmp, "bench")
        path = bench / "bench.jsonl"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return generate(path, tmp / "out", benchmark="jsonl")

    return argv


def with_options(*extra: str):
    return lambda good, tmp: generate(good / "dreambench", tmp / "out", *extra)


def folder_of_garbage(good: Path, tmp: Path) -> list[str]:
    for subject in ("dog", "can"):
        (tmp / "made" / subject / "00").mkdir(parents=True)
        (tmp / "made" / subject / "00" / "a.png").write_text("not a picture")
    argv = generate(good / "dreambench", tmp / "out", "--images", str(tmp / "made"))
    argv[argv.index("--method") + 1] = "folder"
    return argv


def score_broken(change, head: bytes | None = None):
    def argv(good: Path, tmp: Path) -> list[str]:
        results = copy(good, tmp, "results")
        (results / "summary.csv").unlink()  # not scored yet
        change(results)
        aesthetic = tmp / "head.safetensors"
        if head is not None:
            aesthetic.write_bytes(head)
        # Backbones that do not exist: every mistake must be found before any model is loaded.
        missing = str(tmp / "no-model")
        return ["eval", "score", str(results), "--aesthetic-head", str(aesthetic), "--clip-model", missing,
                "--dino-model", missing, "--iqa-model", missing, "--aesthetic-model", missing]  # fmt: skip

    return argv


def rank_broken(change, command: str = "rank"):
    def argv(good: Path, tmp: Path) -> list[str]:
        results = copy(good, tmp, "results")
        change(results)
        extra = [str(good / "published.csv")] if command == "rank" else []
        return ["eval", command, str(results), *extra, "--out", str(tmp / "report")]

    return argv


def out_is_a_file(command: str):
    def argv(good: Path, tmp: Path) -> list[str]:
        target = copy(good, tmp, "a-file")
        if command == "generate":
            return generate(good / "dreambench", target)
        extra = [str(good / "published.csv")] if command == "rank" else []
        return ["eval", command, str(good / "results"), *extra, "--out", str(target)]

    return argv


def _replace_row(index: int, change):
    def edit(rows):
        change(rows[index])

    return edit


def _set(key, value):
    return lambda row: row.update({key: value})


def _drop(key):
    return lambda row: row.pop(key)


# (case, argv from (good inputs, this case's folder), what the line must name)
CASES = [
    # eval generate: values outside what an option can mean
    ("guidance-nan", with_options("--guidance", "nan"), "--guidance=nan"),
    ("guidance-inf", with_options("--guidance", "inf"), "--guidance=inf"),
    (
        "scale-beyond-pipeline",
        with_options("--method", "flexip", "--adapter", "a", "--scale", "11"),
        "--scale=11.0",
    ),
    (
        "ip-adapter-scale-nan",
        with_options("--method", "ip-adapter", "--ip-adapter", "a", "--scale", "0.5,nan"),
        "--scale=nan",
    ),
    (
        "ip-adapter-scale-huge",
        with_options("--method", "ip-adapter", "--ip-adapter", "a", "--scale", "1e30"),
        "--scale=1e+30",
    ),
    ("seeds-negative", with_options("--seeds", "-1"), "got -1"),
    ("seeds-huge", with_options("--seeds", str(10**9)), f"--seeds {10**9}: give at most"),
    ("max-prompts-zero", with_options("--max-prompts", "0"), "--max-prompts must be at least 1, got 0"),
    ("subjects-twice", with_options("--subjects", "dog,dog"), "--subjects names dog twice"),
    ("subjects-none", with_options("--subjects", ","), "--subjects names no subject"),
    ("out-is-a-file", out_is_a_file("generate"), "a-file is a file"),
    # eval generate: benchmark folders and files
    (
        "prompts-json-broken",
        broken_dreambench(lambda b: (b / "prompts.json").write_text("{")),
        "prompts.json",
    ),
    (
        "prompts-json-a-list",
        broken_dreambench(lambda b: (b / "prompts.json").write_text("[]")),
        "prompts.json",
    ),
    (
        "prompts-json-no-classes",
        broken_dreambench(lambda b: edit_json(b / "prompts.json", lambda d: d.pop("classes"))),
        "prompts.json has no 'classes'",
    ),
    (
        "prompts-json-prompt-not-text",
        broken_dreambench(lambda b: edit_json(b / "prompts.json", lambda d: d.update(object_prompts=[3]))),
        "object_prompts",
    ),
    (
        "prompts-json-unknown-placeholder",
        broken_dreambench(
            lambda b: edit_json(
                b / "prompts.json", lambda d: d.update(object_prompts=["a {colour} {class_token}"])
            )
        ),
        "{colour}",
    ),
    (
        "prompts-json-no-prompts",
        broken_dreambench(
            lambda b: edit_json(
                b / "prompts.json", lambda d: d.update(object_prompts=[], live_subject_prompts=[])
            )
        ),
        "no prompts",
    ),
    (
        "subject-folder-missing",
        broken_dreambench(lambda b: shutil.rmtree(b / "images" / "can")),
        "images/can",
    ),
    (
        "reference-not-an-image",
        broken_dreambench(lambda b: (b / "images" / "dog" / "00.jpg").write_text("x")),
        "dog/00.jpg is not a whole image",
    ),
    (
        "subject-outside-the-folder",
        broken_dreambench(
            lambda b: edit_json(
                b / "prompts.json", lambda d: d.update(classes={"../dreambench/images/dog": "dog"})
            )
        ),
        "subject",
    ),
    (
        "caption-file-empty",
        broken_plus(lambda p: (p / "captions" / "animal" / "00.txt").write_text("corgi\n")),
        "00.txt has no prompts",
    ),
    (
        "caption-not-utf8",
        broken_plus(
            lambda p: (p / "captions" / "animal" / "00.txt").write_bytes(
                "chien\ncafé au lait\n".encode("latin-1")
            )
        ),
        "00.txt is not UTF-8",
    ),
    ("no-images", broken_plus(lambda p: (p / "images" / "animal" / "00.jpg").unlink()), "no prompts"),
    ("jsonl-line-a-number", jsonl_benchmark("5\n"), "bench.jsonl:1: not a JSON object"),
    ("jsonl-line-a-list", jsonl_benchmark('["mug", "a.png", "a mug"]\n'), "bench.jsonl:1: not a JSON object"),
    (
        "jsonl-reference-a-number",
        jsonl_benchmark(_jsonl([{"subject": "mug", "reference": 5, "prompt": "a mug"}])),
        "bench.jsonl:1: reference",
    ),
    (
        "jsonl-prompt-empty",
        jsonl_benchmark(_jsonl([{"subject": "mug", "reference": "a.png", "prompt": " "}])),
        "bench.jsonl:1: prompt",
    ),
    (
        "jsonl-subject-a-path",
        jsonl_benchmark(_jsonl([{"subject": "../../x", "reference": "a.png", "prompt": "a"}])),
        "subject '../../x'",
    ),
    ("jsonl-empty", jsonl_benchmark("\n"), "no prompts"),
    (
        "jsonl-not-utf8",
        jsonl_benchmark('{"subject": "caf\xe9", "reference": "a.png", "prompt": "a"}\n'.encode("latin-1")),
        "bench.jsonl is not UTF-8",
    ),
    (
        "jsonl-reference-not-an-image",
        jsonl_benchmark(_jsonl([{"subject": "m", "reference": "bench.jsonl", "prompt": "a"}])),
        "bench.jsonl is not a whole image",
    ),
    ("folder-images-not-images", folder_of_garbage, "a.png is not a whole image"),
    # eval score: a hand-edited results directory
    (
        "manifest-line-not-json",
        score_broken(lambda r: edit_manifest(r, lambda rows: rows.append("{\n"))),
        "manifest.jsonl:5: not valid JSON",
    ),
    (
        "manifest-line-a-list",
        score_broken(lambda r: edit_manifest(r, lambda rows: rows.append("[1, 2]\n"))),
        "manifest.jsonl:5: not a JSON object",
    ),
    (
        "manifest-field-missing",
        score_broken(lambda r: edit_manifest(r, _replace_row(1, _drop("prompt")))),
        "manifest.jsonl:2: missing ['prompt']",
    ),
    (
        "manifest-field-unknown",
        score_broken(lambda r: edit_manifest(r, _replace_row(1, _set("seed", 0)))),
        "manifest.jsonl:2: unknown ['seed']",
    ),
    (
        "manifest-real-images-a-string",
        score_broken(lambda r: edit_manifest(r, _replace_row(0, _set("real_images", "00.jpg")))),
        "manifest.jsonl:1: real_images",
    ),
    (
        "manifest-prompt-index-text",
        score_broken(lambda r: edit_manifest(r, _replace_row(2, _set("prompt_index", "1")))),
        "manifest.jsonl:3: prompt_index",
    ),
    (
        "manifest-dial-nan",
        score_broken(lambda r: edit_manifest(r, _replace_row(3, _set("dial", float("nan"))))),
        "manifest.jsonl:4: dial",
    ),
    (
        "manifest-image-outside",
        score_broken(
            lambda r: edit_manifest(
                r, _replace_row(0, _set("image", "../results/images/preservation-0/dog/00/0.png"))
            )
        ),
        "manifest.jsonl:1: image",
    ),
    (
        "manifest-line-twice",
        score_broken(lambda r: edit_manifest(r, lambda rows: rows.append(rows[1]))),
        "manifest.jsonl:5 lists images/preservation-0/dog/01/0.png again (first on line 2)",
    ),
    ("manifest-empty", score_broken(lambda r: (r / "manifest.jsonl").write_text("")), "lists no images"),
    (
        "generation-json-broken",
        score_broken(lambda r: (r / "generation.json").write_text('{"label":')),
        "generation.json: not valid JSON",
    ),
    (
        "generation-json-no-label",
        score_broken(lambda r: edit_json(r / "generation.json", lambda d: d.pop("label"))),
        "generation.json has no 'label'",
    ),
    (
        "reference-gone",
        score_broken(lambda r: edit_manifest(r, _replace_row(0, _set("reference", str(r / "gone.jpg"))))),
        "gone.jpg is not a whole image",
    ),
    ("aesthetic-head-missing", score_broken(lambda r: None), "aesthetic head"),
    (
        "aesthetic-head-garbage",
        score_broken(lambda r: None, head=b"not tensors"),
        "head.safetensors: not a readable",
    ),
    # eval rank and curve: a hand-edited summary, and where the report goes
    (
        "summary-column-missing",
        rank_broken(
            lambda r: edit_summary(
                r, lambda lines: lines.__setitem__(0, lines[0].replace("CLIP-T", "CLIP_T"))
            )
        ),
        "summary.csv: missing columns",
    ),
    (
        "summary-value-text",
        rank_broken(
            lambda r: edit_summary(r, lambda lines: lines.__setitem__(1, lines[1].replace("0.25", "n/a")))
        ),
        "summary.csv:2: CLIP-T 'n/a'",
    ),
    (
        "summary-dial-text",
        rank_broken(
            lambda r: edit_summary(r, lambda lines: lines.__setitem__(1, lines[1].replace(",0.0,", ",low,")))
        ),
        "summary.csv:2: dial 'low'",
    ),
    (
        "summary-dial-twice",
        rank_broken(lambda r: edit_summary(r, lambda lines: lines.append(lines[1]))),
        "summary.csv:4: dial 0.0 again",
    ),
    (
        "summary-no-rows",
        rank_broken(lambda r: edit_summary(r, lambda lines: lines.__delitem__(slice(1, None)))),
        "summary.csv has no rows",
    ),
    (
        "summary-not-utf8",
        rank_broken(
            lambda r: (r / "summary.csv").write_bytes(
                (r / "summary.csv").read_bytes().replace(b"results", "r\xe9sults".encode("latin-1"))
            )
        ),
        "not UTF-8",
    ),
    (
        "curve-summary-nan",
        rank_broken(
            lambda r: edit_summary(r, lambda lines: lines.__setitem__(1, lines[1].replace("0.25", "nan"))),
            "curve",
        ),
        "summary.csv:2: CLIP-T 'nan'",
    ),
    (
        "curve-of-a-csv",
        lambda g, t: ["eval", "curve", str(g / "published.csv"), "--out", str(t / "report")],
        "published.csv is a file",
    ),
    ("rank-out-is-a-file", out_is_a_file("rank"), "a-file is a file"),
    ("curve-out-is-a-file", out_is_a_file("curve"), "a-file is a file"),
]


@pytest.mark.parametrize(("argv", "named"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_an_eval_mistake_ends_in_one_line_naming_it(argv, named, good, tmp_path, capsys):
    args = argv(good, tmp_path)
    before = sorted(path for path in tmp_path.rglob("*"))
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line.startswith("flexip ")]
    assert "Traceback" not in captured.err and len(lines) == 1, captured.err
    assert captured.err.strip() == lines[0] and named in lines[0], lines[0]
    assert sorted(path for path in tmp_path.rglob("*")) == before  # nothing written, nothing left behind


def _bom_crlf(path: Path) -> None:
    """`path` as a spreadsheet or Windows editor saves it: a UTF-8 BOM and CRLF line ends."""
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def test_files_saved_with_a_bom_and_crlf_read_as_they_were_meant(good, tmp_path, capsys):
    bench = copy(good, tmp_path, "dreambench")
    _bom_crlf(bench / "prompts.json")
    assert [case.prompt for case in load_benchmark("dreambench", bench).cases] == [
        "a dog in the jungle",
        "a can on a table",
    ]
    plus = copy(good, tmp_path, "dreambench++")
    _bom_crlf(plus / "captions" / "animal" / "00.txt")
    assert [case.prompt for case in load_benchmark("dreambench++", plus).cases] == ["a corgi on the moon"]
    jsonl = copy(good, tmp_path, "bench") / "bench.jsonl"
    _bom_crlf(jsonl)
    assert [case.subject for case in load_benchmark("jsonl", jsonl).cases] == ["mug"]
    # A line break other than \n, \r\n and \r, as an editor may leave inside a prompt, ends no line.
    jsonl.write_text('{"subject": "mug", "reference": "a.png", "prompt": "a mug\u2028on a table"}\n')
    assert [case.prompt for case in load_benchmark("jsonl", jsonl).cases] == ["a mug\u2028on a table"]

    results = copy(good, tmp_path, "results")
    for name in ("manifest.jsonl", "generation.json", "summary.csv"):
        _bom_crlf(results / name)
    settings, planned = check_results(results)
    assert settings["label"] == "results" and [item.prompt_index for item in planned] == [0, 1, 0, 1]
    published = copy(good, tmp_path, "published.csv")
    _bom_crlf(published)
    assert main(["eval", "rank", str(results), str(published), "--out", str(tmp_path / "report")]) == 0
    ranked = (tmp_path / "report" / "mrank.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in ranked[1:]} == {"Ours", "Theirs", "results preservation=0",
                                                          "results preservation=1"}  # fmt: skip
    capsys.readouterr()


@pytest.mark.parametrize("required", ["", "1"])
def test_missing_shared_data_skips_with_its_reason_unless_required(required, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXIP_REQUIRE_SHARED", required)
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome, match=f"{tmp_path / 'absent'} is absent"):
        need_shared(tmp_path / "absent")
    assert need_shared(tmp_path) == tmp_path


def test_steps_the_base_model_cannot_take_are_refused_before_anything_is_written(
    good, tmp_path, tiny_models, capsys
):
    argv = generate(good / "dreambench", tmp_path / "out", "--steps", "5000")
    argv[argv.index("--base") + 1] = str(tiny_models.base)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith(
        "flexip eval: error: --steps=5000 is more"
    )
    assert not (tmp_path / "out").exists()
