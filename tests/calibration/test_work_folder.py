"""The calibration's work folder: every process's measurements read together, a line a kill cut short measured
again, and a folder made with other settings refused in one line saying what differs."""

import pytest

from flexip.calibration.work import Measured, WorkFolder, work_folder
from flexip.errors import FlexIPError

SETTINGS = {"seeds": [0, 1], "points": 9, "adapter_weights": "ab" * 32}


def unit(pair: int, seed: int) -> Measured:
    return Measured(pair, seed, (0.0, 0.5, 1.0), (0.1, 0.2, 0.3), (0.3, 0.2, 0.1 + pair))


def test_the_parts_of_every_process_are_read_together_and_a_cut_line_is_measured_again(tmp_path):
    work = WorkFolder(work_folder(tmp_path / "calibrated"), SETTINGS)
    assert work.path == tmp_path / "calibrated.partial"
    work.create()
    work.append(0, unit(0, 0))
    work.append(1, unit(0, 1))
    part = work.path / "part-0.jsonl"
    part.write_bytes(part.read_bytes() + b'{"pair": 1, "seed": 0, "gates": [0.0, 0.')  # killed while writing

    assert set(work.records()) == {unit(0, 0).key, unit(0, 1).key}
    assert work.records()[unit(0, 1).key] == unit(0, 1)  # the floats read back exactly

    work.append(0, unit(1, 0))  # the cut line is dropped first
    assert set(work.records()) == {unit(0, 0).key, unit(0, 1).key, unit(1, 0).key}
    work.remove()
    assert not work.path.exists()


def test_a_work_folder_made_with_other_settings_is_refused_saying_what_differs(tmp_path):
    WorkFolder(tmp_path / "a.partial", SETTINGS).create()
    WorkFolder(tmp_path / "a.partial", dict(SETTINGS)).check()  # the same settings: resumed

    other = WorkFolder(tmp_path / "a.partial", {**SETTINGS, "seeds": [0], "adapter_weights": "cd" * 32})
    with pytest.raises(FlexIPError) as error:
        other.check()

    message = str(error.value)
    assert "\n" not in message and "a.partial" in message and "points" not in message
    assert "seeds: [0, 1] before, [0] now" in message
    assert "adapter_weights: abababababab before, cdcdcdcdcdcd now" in message


def test_a_damaged_line_inside_a_part_is_refused(tmp_path):
    work = WorkFolder(tmp_path / "a.partial", SETTINGS)
    work.create()
    (work.path / "part-0.jsonl").write_text('{"pair": 0}\n')
    with pytest.raises(FlexIPError, match="part-0.jsonl holds a damaged line"):
        work.records()
