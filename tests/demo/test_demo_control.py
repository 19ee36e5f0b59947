"""The controls' recipe (`python -m recipes.demo.control`) leaves files already in --out alone unless told."""

from __future__ import annotations

import pytest

from recipes.demo import control


@pytest.mark.parametrize("what", ["sheets", "measure"])
def test_files_in_out_are_replaced_only_with_overwrite(what, tmp_path, capsys, monkeypatch):
    kept = tmp_path / control.OUTPUTS[what][-1]
    kept.write_bytes(b"an earlier run's")
    monkeypatch.setattr(control, "load_pipe", lambda: pytest.fail("refused before the model loads"))
    with pytest.raises(SystemExit) as exit:
        control.main([what, "--out", str(tmp_path)])
    assert exit.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert kept.read_bytes() == b"an earlier run's"
