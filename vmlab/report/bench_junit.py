"""JUnit XML for a bench run: one testcase per case and job, so CI shows what ran and failed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path


def bench_junit(
    name: str,
    results: Sequence[tuple[str, str, int, Mapping[str, float]]],
    failed: Mapping[str, str],
    unsupported: Mapping[str, Sequence[str]],
    jobs: Sequence[str],
) -> str:
    """results: (case, job, repetition, metrics); failed: case -> error; unsupported likewise."""
    suite = ET.Element("testsuite", name=f"vmlab bench {name}")
    done = {(case, job) for case, job, _, _ in results}
    cases = list(dict.fromkeys([c for c, _, _, _ in results] + list(failed) + list(unsupported)))
    counts = {"tests": 0, "failures": 0, "skipped": 0}
    for case in cases:
        for job in jobs:
            counts["tests"] += 1
            test = ET.SubElement(suite, "testcase", classname=case, name=job)
            if case in unsupported:
                counts["skipped"] += 1
                ET.SubElement(test, "skipped", message="; ".join(unsupported[case]))
            elif (case, job) not in done:
                counts["failures"] += 1
                failure = ET.SubElement(test, "failure", message=failed.get(case, "did not run"))
                failure.text = failed.get(case, "")
            else:
                metrics = [m for c, j, r, m in results if (c, j) == (case, job) and r > 0]
                out = ET.SubElement(test, "system-out")
                out.text = "\n".join(
                    f"r{i}: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(m.items()))
                    for i, m in enumerate(metrics, start=1)
                )
    for key, value in counts.items():
        suite.set(key, str(value))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_bench_junit(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
