"""Release readiness: the wheel and sdist build, pass twine check, and carry what the package needs."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_and_sdist_build_and_pass_twine_check(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheels = list(tmp_path.glob("*.whl"))
    sdists = list(tmp_path.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    check = subprocess.run(  # noqa: PLW1510 - the exit code is asserted with the output
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "pipecat_tts_failover/py.typed" in names
    assert any(
        n.startswith("pipecat_tts_failover/store/lua/") and n.endswith(".lua") for n in names
    )
    assert not any(n.startswith("tests/") for n in names)
    metadata = (
        zipfile.ZipFile(wheels[0])
        .read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    for extra in ("redis", "cartesia", "elevenlabs", "metrics", "demo", "dev"):
        assert f"Provides-Extra: {extra}" in metadata
    entry_points = (
        zipfile.ZipFile(wheels[0])
        .read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
        .decode()
    )
    assert "pipecat-tts-failover = pipecat_tts_failover.cli:main" in entry_points
