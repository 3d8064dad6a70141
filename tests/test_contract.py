"""The contract: generated/ is exactly what protos/ produce, and the package imports cleanly."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_protos.py"), "--out", str(tmp_path)], check=True)
    fresh, committed = tmp_path, ROOT / "generated"
    assert _tree(fresh) == _tree(committed), "generated/ has extra or missing files: run scripts/generate_protos.py"
    stale = [rel for rel in sorted(_tree(fresh)) if not filecmp.cmp(fresh / rel, committed / rel, shallow=False)]
    assert not stale, f"generated/ is stale ({stale}): run scripts/generate_protos.py"


def test_generated_package_imports_without_path_hacks() -> None:
    code = (
        "from dsa110.contimg.v1 import images_pb2_grpc, jobs_pb2_grpc, sources_pb2_grpc, "
        "measurement_sets_pb2_grpc, common_pb2; print(common_pb2.ErrorReason.Name(42))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "ERROR_REASON_INVALID_JOB_TRANSITION"


def test_every_service_has_its_rpcs() -> None:
    from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2

    def methods(module: object, service: str) -> set[str]:
        return {m.name for m in module.DESCRIPTOR.services_by_name[service].methods}  # type: ignore[attr-defined]

    assert {
        "GetImage",
        "BatchGetImages",
        "ListImages",
        "CreateImage",
        "UpdateImage",
        "DeleteImage",
        "SearchImages",
    } <= methods(images_pb2, "ImageService")
    assert {
        "GetSource",
        "BatchGetSources",
        "ListSources",
        "SearchSources",
        "GetLightcurve",
        "RecordPhotometry",
    } <= methods(sources_pb2, "SourceService")
    assert {
        "GetJob",
        "ListJobs",
        "CreateJob",
        "StartJob",
        "ReportJobProgress",
        "SucceedJob",
        "FailJob",
        "CancelJob",
        "RetryJob",
        "ClaimJob",
        "HeartbeatJob",
        "UpdateJob",
        "AppendJobLog",
        "WatchJob",
        "WatchJobs",
    } <= methods(jobs_pb2, "JobService")
    assert {
        "GetMeasurementSet",
        "BatchGetMeasurementSets",
        "ListMeasurementSets",
        "UpdateMeasurementSet",
        "AdvanceMeasurementSetStage",
        "DeleteMeasurementSet",
    } <= methods(measurement_sets_pb2, "MSService")
