"""iperf3 jobs: the guest is the client, a one-off server in the lab namespace the peer."""

from __future__ import annotations

from collections.abc import Sequence

from vmlab.bench.workloads import JobContext, raw_output_kept, save_raw
from vmlab.guest.ssh import GuestSSH
from vmlab.net.iperf import (
    IperfServer,
    client_timeout_s,
    guest_client_command,
    parse_iperf,
    summarize_iperf,
)
from vmlab.net.lab import LabNetwork
from vmlab.results.rundir import now_iso
from vmlab.spec import IperfJob


def run_net_jobs(ctx: JobContext, ssh: GuestSSH, lab: LabNetwork, jobs: Sequence[IperfJob]) -> None:
    server = str(lab.gateway)
    for job in jobs:
        for repetition in ctx.repeats(job.name):
            job_dir = ctx.case_dir.job(job.name, repetition)
            ctx.events.stage(ctx.case, f"iperf3 {job.name} r{repetition} ({job.duration_s} s)")
            started = now_iso()
            with (
                IperfServer(lab.netns, server, output=job_dir.file("server.json")),
                raw_output_kept(
                    job_dir, stdout="iperf.json", stderr="iperf.stderr", started=started
                ),
            ):
                result = ssh.run(
                    guest_client_command(
                        server,
                        duration_s=job.duration_s,
                        reverse=job.reverse,
                        parallel=job.parallel,
                    ),
                    timeout_s=client_timeout_s(job.duration_s),
                    check=False,
                )
            raw = save_raw(
                job_dir,
                "iperf.json",
                "iperf.stderr",
                result.stdout,
                result.stderr,
                exit_code=result.exit_code,
                started=started,
                command=result.command,
            )
            parsed = parse_iperf(result.stdout, path=raw)
            metrics = summarize_iperf(parsed)
            job_dir.write_json(
                "summary.json", {"metrics": metrics, "iperf": parsed.model_dump(mode="json")}
            )
            ctx.finished(job.name, repetition, metrics)
