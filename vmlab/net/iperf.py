"""iperf3 jobs: a one-off server in the lab namespace, a client command for the guest, and the
client's ``--json`` output parsed into a typed result.

The server runs ``ip netns exec NS iperf3 -s -1 --json`` (one test, then it exits) with its
JSON saved to a file; the lead runs :func:`guest_client_command` in the guest over SSH, saves
the raw stdout, then calls :func:`parse_iperf`.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from vmlab.errors import HostError, LaunchError, ResultError
from vmlab.metrics import IPERF_METRICS
from vmlab.net.netns import Netns
from vmlab.proc import Deadline, ManagedProcess

log = logging.getLogger(__name__)

DEFAULT_PORT = 5201
TCP_LISTEN = "0A"


# --- commands --------------------------------------------------------------------------------


def server_argv(bind: str, *, port: int = DEFAULT_PORT, idle_timeout_s: int = 120) -> list[str]:
    """One-off server: serves one test and exits; gives up after ``idle_timeout_s`` idle."""
    return [
        "iperf3", "--server", "--one-off", "--json",
        "--bind", bind, "--port", str(port), "--idle-timeout", str(idle_timeout_s),
    ]  # fmt: skip


def client_argv(
    server: str,
    *,
    port: int = DEFAULT_PORT,
    duration_s: int = 10,
    reverse: bool = False,
    parallel: int = 1,
    udp: bool = False,
    bitrate: str | None = None,
    connect_timeout_ms: int = 5000,
    iperf3: str = "iperf3",
) -> list[str]:
    """The client side; ``reverse`` (-R) makes the server send and the client receive."""
    if duration_s < 1 or parallel < 1:
        raise ValueError("duration_s and parallel must be at least 1")
    argv = [
        iperf3, "--client", server, "--port", str(port), "--json",
        "--time", str(duration_s), "--parallel", str(parallel),
        "--connect-timeout", str(connect_timeout_ms),
    ]  # fmt: skip
    if reverse:
        argv.append("--reverse")
    if udp:
        argv.append("--udp")
    if bitrate is not None:
        argv += ["--bitrate", bitrate]
    return argv


def guest_client_command(server: str, **options: Any) -> str:
    """:func:`client_argv` as one shell command line for ``GuestSSH.run``."""
    return shlex.join(client_argv(server, **options))


def client_timeout_s(duration_s: int, *, slack_s: float = 30.0) -> float:
    """How long to wait for a client run: the test, connection setup and the result exchange."""
    return duration_s + slack_s


# --- the server ------------------------------------------------------------------------------


def _listening(pid: int, port: int) -> bool:
    """True when process ``pid`` (in whatever namespace: /proc/PID/net is its view) listens on
    TCP ``port``."""
    want = f"{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].rsplit(":", 1)[1] == want and fields[3] == TCP_LISTEN:
                return True
    return False


class IperfServer(ManagedProcess):
    """``iperf3 -s -1 --json`` inside a namespace, stdout saved to ``output``; stopped on exit."""

    def __init__(
        self,
        netns: Netns,
        bind: str,
        *,
        output: Path,
        port: int = DEFAULT_PORT,
        ready_timeout_s: float = 10.0,
        idle_timeout_s: int = 120,
    ) -> None:
        super().__init__(
            netns.exec_argv(server_argv(bind, port=port, idle_timeout_s=idle_timeout_s)),
            log_path=output,
            what="iperf3 server",
            missing_hint="apt-get install iperf3",
        )
        self.output = output
        self.port = port
        self.ready_timeout_s = ready_timeout_s

    def start(self) -> None:
        if shutil.which("iperf3") is None:
            raise HostError("iperf3 is missing", hint="apt-get install iperf3")
        super().start()
        assert self.proc is not None
        deadline = Deadline(self.ready_timeout_s)
        while not _listening(self.proc.pid, self.port):
            self.check_running("before it listened")
            if deadline.expired():
                raise LaunchError(
                    f"iperf3 server not listening within {self.ready_timeout_s:.0f} s",
                    log=self.output,
                )
            time.sleep(0.02)


# --- the result ------------------------------------------------------------------------------


class IperfResult(BaseModel):
    """One iperf3 client run. ``sent_*`` is the sender's side, ``received_*`` the receiver's,
    whichever end each was (with ``reverse`` the server sends)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    protocol: Literal["TCP", "UDP", "SCTP"]
    reverse: bool
    num_streams: int
    duration_s: float  # what was asked for
    sent_bytes: int
    received_bytes: int
    sent_seconds: float
    received_seconds: float
    sent_bits_per_s: float
    received_bits_per_s: float
    retransmits: int | None  # TCP: the sender's retransmitted segments
    lost_packets: int | None  # UDP
    lost_pct: float | None  # UDP
    jitter_ms: float | None  # UDP
    local_cpu_pct: float | None
    remote_cpu_pct: float | None
    local_host: str | None
    remote_host: str | None

    @property
    def direction(self) -> Literal["client-to-server", "server-to-client"]:
        return "server-to-client" if self.reverse else "client-to-server"


def summarize_iperf(result: IperfResult) -> dict[str, float]:
    """Flat metrics named as in :data:`IPERF_METRICS`; a metric not measured gives no key."""
    out: dict[str, float] = {}
    for name in IPERF_METRICS:
        value = getattr(result, name)
        if value is not None:
            out[name] = float(value)
    return out


def _dict(data: Any, key: str, where: str) -> dict[str, Any]:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, dict):
        raise ResultError(f"iperf3 JSON has no object {where}{key}")
    return value


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def parse_iperf(text: str | bytes, *, path: Path | None = None) -> IperfResult:
    """Parse ``iperf3 --client ... --json`` output (iperf 3.1 and later).

    Raises ResultError for output that is not iperf3 JSON, and for a run that failed (the
    ``error`` iperf3 puts in its JSON, e.g. "unable to connect to server").
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResultError(f"not JSON: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise ResultError("iperf3 JSON is not an object", path=path)
    if data.get("error"):
        raise ResultError(
            f"iperf3 failed: {data['error']}",
            path=path,
            hint="is the iperf3 server running and reachable from the guest?",
        )
    try:
        start = _dict(data, "start", "")
        test = _dict(start, "test_start", "start.")
        end = _dict(data, "end", "")
        if "accepted_connection" in start:
            raise ResultError(
                "this is iperf3 server output; parse the client's (its side is complete)",
                path=path,
            )
        protocol = str(test["protocol"])
        # UDP before iperf 3.?? has only "sum"; TCP always has sum_sent and sum_received.
        sent = end.get("sum_sent") or _dict(end, "sum", "end.")
        received = end.get("sum_received") or _dict(end, "sum", "end.")
        cpu = end.get("cpu_utilization_percent") or {}
        connected = start.get("connected") or [{}]
        udp_side = received if protocol == "UDP" else {}
        return IperfResult(
            version=str(start.get("version", "")),
            protocol=protocol,  # validated by pydantic
            reverse=bool(test.get("reverse", 0)),
            num_streams=int(test["num_streams"]),
            duration_s=float(test["duration"]),
            sent_bytes=int(sent["bytes"]),
            received_bytes=int(received["bytes"]),
            sent_seconds=float(sent["seconds"]),
            received_seconds=float(received["seconds"]),
            sent_bits_per_s=float(sent["bits_per_second"]),
            received_bits_per_s=float(received["bits_per_second"]),
            retransmits=_opt_int(sent.get("retransmits")) if protocol == "TCP" else None,
            lost_packets=_opt_int(udp_side.get("lost_packets")),
            lost_pct=_opt_float(udp_side.get("lost_percent")),
            jitter_ms=_opt_float(udp_side.get("jitter_ms")),
            local_cpu_pct=_opt_float(cpu.get("host_total")),
            remote_cpu_pct=_opt_float(cpu.get("remote_total")),
            local_host=connected[0].get("local_host"),
            remote_host=connected[0].get("remote_host"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"unexpected iperf3 JSON layout: {exc!r}", path=path) from exc
