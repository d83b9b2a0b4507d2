"""The ONNX export runs in a spawned process (export_tools/onnx_export.py). A process that
dies must end the export with an error, never a wait: a multiprocessing Pool replaces a
dead worker and waits for its answer forever."""
from __future__ import annotations

import multiprocessing
import os
import threading

from export_tools.models.grainrec import GRAINRec
from export_tools.onnx_export import export_encoder


class DiesInTheExportProcess(GRAINRec):
    """GRAINRec whose construction in a child process ends that process at once, as an
    out-of-memory kill or a crash of the exporter would."""

    def __init__(self, *args, **kwargs):
        if multiprocessing.parent_process() is not None:
            os._exit(3)
        super().__init__(*args, **kwargs)


def test_an_export_process_that_dies_raises_instead_of_waiting(tmp_path):
    model = DiesInTheExportProcess(30, dim=8)
    outcome: dict = {}

    def export() -> None:
        try:
            export_encoder(model, tmp_path / "encoder.onnx")
        except Exception as e:  # noqa: BLE001 - the test checks what it is
            outcome["error"] = e

    worker = threading.Thread(target=export, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "export_encoder still waits for a process that died"
    error = outcome.get("error")
    assert isinstance(error, RuntimeError), error
    assert "the ONNX export process died before it finished" in str(error)
    assert not (tmp_path / "encoder.onnx").exists()
