"""Rules of the code base that a test can hold: import direction, stubs current, no implicit downloads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_models_never_import_grpc_or_services():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & {"grpc", "grpc_health", "grpc_reflection", "services", "google"})
        for p in (ROOT / "models").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_generated_stubs_match_the_protos():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_builders_never_download(monkeypatch):
    """Every registered detector builds with downloads made impossible."""
    import torch.hub
    import torchvision.models._api as tv_api

    from models.detection import DETECTORS, build_detector

    def refuse(*args, **kwargs):
        raise AssertionError("a builder tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse, raising=False)
    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", refuse)
    for name in DETECTORS.names():
        assert build_detector(name, num_classes=3) is not None
