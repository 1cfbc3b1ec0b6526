"""`ews site import FILE` / `ews site export [FILE]` against a real nats-server."""

from __future__ import annotations

from pathlib import Path

import yaml
from ews_contracts.settings import BUNDLED_DEMO_SITE

from .test_cli_errors import assert_one_line_error, run_ews


def test_import_export_round_trip(nats_url: str, tmp_path: Path):
    nothing = run_ews(["site", "export"], tmp_path, NATS_URL=nats_url)
    assert_one_line_error(nothing, "no stored configuration", "demo")

    imported = run_ews(["site", "import", str(BUNDLED_DEMO_SITE)], tmp_path, NATS_URL=nats_url)
    assert imported.returncode == 0, imported.stderr
    assert "stored as version 1" in imported.stdout

    out = tmp_path / "exported.yaml"
    exported = run_ews(["site", "export", str(out)], tmp_path, NATS_URL=nats_url)
    assert exported.returncode == 0, exported.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["site"] == "demo" and out.read_text().startswith("# site configuration version 1")

    same = run_ews(["site", "import", str(out)], tmp_path, NATS_URL=nats_url)
    assert "nothing stored" in same.stdout

    doc["name"] = "Imported again"
    out.write_text(yaml.safe_dump(doc))
    changed = run_ews(["site", "import", str(out)], tmp_path, NATS_URL=nats_url)
    assert "stored as version 2" in changed.stdout and "name: " in changed.stdout
    assert "Imported again" in run_ews(["site", "export"], tmp_path, NATS_URL=nats_url).stdout


def test_bad_files_and_no_nats_give_one_line(nats_url: str, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BUNDLED_DEMO_SITE.read_text().replace("timezone: Europe/Paris", "timezone: Mars/Olympus"))
    assert_one_line_error(run_ews(["site", "import", str(bad)], tmp_path, NATS_URL=nats_url), "timezone")
    assert_one_line_error(run_ews(["site", "import", str(tmp_path / "none.yaml")], tmp_path), "cannot read")
    assert_one_line_error(run_ews(["site", "export"], tmp_path), "NATS does not answer")
