"""`fleetwatch report` renders one self-contained HTML page for a device and for a cohort."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleetwatch.baselines import BaselineStore, fit_reference
from fleetwatch.frames import Registry, decode_messages
from fleetwatch.simulate import Change, FleetSpec, Target, inventory_csv, simulate
from fleetwatch.sinks import open_store


def test_report_for_a_device_and_a_cohort(tmp_path: Path) -> None:
    spec = FleetSpec(n_devices=20, seed=4)
    telemetry = simulate(spec, [Change("anomaly_rate", 0.2, Target(devices=(1,)), onset=60)], n_windows=72)
    store = open_store(f"embedded://{tmp_path / 'store'}")
    store.write_frames(
        decode_messages(telemetry.messages(), telemetry.device, telemetry.received, Registry.builtin()).batches[1]
    )
    schema = Registry.builtin().get(1)
    start = int(spec.start)
    ref = store.read_frames(start, start + 48 * 3600, schema=schema)
    model = int(ref["model_id"][0])
    BaselineStore(tmp_path / "data" / "baselines").save(
        fit_reference(ref, model_id=model, version=f"model-{model}-v1", fitted_at=0, time_range=(0, 1))
    )
    import numpy as np

    store.write_table(
        "findings",
        np.array([start + 65 * 3600]),
        {
            "scope": np.array(["device"]),
            "key": np.array(["dev-00001"]),
            "signal": np.array(["anomaly_rate"]),
            "severity": np.array(["critical"]),
            "model_id": np.array([str(model)]),
        },
        {"effect": np.array([0.18])},
    )
    store.close()
    (tmp_path / "inv.csv").write_text(inventory_csv(spec))
    env = {
        **os.environ,
        "FLEETWATCH_DATA_DIR": str(tmp_path / "data"),
        "FLEETWATCH_STORE__URL": f"embedded://{tmp_path / 'store'}",
        "FLEETWATCH_FLEET__INVENTORY": str(tmp_path / "inv.csv"),
    }
    window = ["--from", str(start), "--to", str(start + 72 * 3600)]
    for who in (["--device", "dev-00001"], ["--cohort", "fw_version=1.0.0"]):
        out = tmp_path / "r.html"
        subprocess.run(
            [sys.executable, "-m", "fleetwatch", "report", *who, *window, "-o", str(out)],
            env=env,
            check=True,
            capture_output=True,
        )
        page = out.read_text()
        assert page.startswith("<!doctype html>") and page.count("<svg") >= 8
        assert "anomaly_rate" in page and f"model-{model}-v1" in page
    device_page = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "report", "--device", "dev-00001", *window, "-o", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    assert device_page.returncode == 0 and "1 findings marked" in out.read_text()
