"""The Ray backend against a real head node, started the way a cluster user starts one (``ray start --head``).

Marked slow (about 4 minutes on 2 busy cores: the head takes ~25 s to start, then configs/smoke.yaml is swept
twice, on the cluster and on the local pool). Run it with ``pytest -m slow tests/test_ray_cluster.py``.

The head has token authentication on (``RAY_AUTH_MODE=token``, as Ray turns on by default for clusters) and
listens on 127.0.0.1 only: Ray maps ``--node-ip-address 127.0.0.1`` to the machine's routable address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (then the GCS and raylet bind the loopback address), which the test
checks by listing every listening socket of the head's processes. Its HOME and temp dir are the test's own, so
no ``~/.ray`` or ``/tmp/ray`` of the user is touched; it is stopped by signalling its own ``--block`` process,
never with ``ray stop`` (which stops every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from rlflat.sweep import run_sweep, timing_columns

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening_addresses(pids: set[int]) -> set[str]:
    """``ip:port`` of every listening TCP socket owned by ``pids`` (from /proc, no extra dependency)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:  # the process ended meanwhile
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                hex_ip, hex_port = fields[1].split(":")
                found.add(f"{_ip(hex_ip)}:{int(hex_port, 16)}")
    return found


def _ip(hex_ip: str) -> str:
    """/proc/net's little-endian hex address; an IPv4-mapped IPv6 address as its IPv4 form."""
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 16 and words[:12] == b"\0" * 10 + b"\xff\xff":
        words = words[12:]
    return socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)


def _head_pids(session: int, temp_dir: Path) -> set[int]:
    """The head's processes: its session, plus anything started with its temp dir on the command line."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[3]) == session or str(temp_dir) in cmdline:
            pids.add(int(entry))
    return pids


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A token-authenticated head on 127.0.0.1; yields the driver environment (address and token)."""
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("ray-head")
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    home, temp_dir = root / "home", Path("/tmp") / f"rlflat-ray-{os.getpid()}"  # short: unix socket paths
    home.mkdir()
    port = _free_port()
    env = {**os.environ, "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    env |= {"RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block"]
    command += ["--node-ip-address", "127.0.0.1", "--port", str(port), "--ray-client-server-port", str(_free_port())]
    command += ["--include-dashboard", "false", "--num-cpus", "2", "--temp-dir", str(temp_dir)]
    log = open(root / "head.log", "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (root / "head.log").read_text():
            assert process.poll() is None, (root / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head did not start within 180 s"
            time.sleep(0.5)
        addresses = _listening_addresses(_head_pids(process.pid, temp_dir))
        assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses
        driver = {key: value for key, value in env.items() if key not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        driver["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        driver["PYTHONPATH"] = str(REPO)
        yield {**driver, "_TOKEN": str(token)}
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # --block: the head drains and stops its own processes
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _sweep(env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rlflat.sweep", str(SMOKE), "--backend", "ray", "--out", str(out)]
    clean = {k: v for k, v in env.items() if not k.startswith("_")}
    return subprocess.run([*command, "--no-progress"], env=clean, capture_output=True, text=True, check=False, cwd=REPO)


def test_refused_and_unauthenticated_connections_are_one_line_writing_nothing(
    head: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "study"
    unauthenticated = _sweep(head, out)  # the driver lacks RAY_AUTH_MODE=token and the token
    assert unauthenticated.returncode == 2, unauthenticated.stderr
    assert unauthenticated.stderr.count("\n") == 1 and "RAY_AUTH_MODE=token" in unauthenticated.stderr
    refused = _sweep({**head, "RAY_ADDRESS": f"127.0.0.1:{_free_port()}"}, out)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "refused" in refused.stderr
    assert not out.exists()


def test_smoke_study_on_the_cluster_matches_the_local_pool(head: dict[str, str], tmp_path: Path) -> None:
    driver = {**head, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": head["_TOKEN"]}
    remote = _sweep(driver, tmp_path / "ray")
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = run_sweep(SMOKE, tmp_path / "local", backend="local", workers=2, progress=False)
    assert not local.failed
    tables = [pd.read_parquet(tmp_path / name / "runs.parquet") for name in ("ray", "local")]
    ray_table, local_table = (
        t.drop(columns=timing_columns(t)).sort_values("run_id").reset_index(drop=True) for t in tables
    )
    assert len(ray_table) == 4 and set(ray_table["status"]) == {"ok"}
    pd.testing.assert_frame_equal(ray_table, local_table)
