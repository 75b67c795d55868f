"""JUnit XML for `mpbench check --junit FILE`: one test case per benchmark case.

GitHub, GitLab and Jenkins test reporters then show regressions as failed tests, with the
finding as the failure message. Cases skipped in CURRENT are skipped tests; notes and
improvements go to the test's system-out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from bench.analysis.assessment import Assessment
from bench.analysis.compare import CaseComparison


def _classname(case: CaseComparison) -> str:
    """'mpbench.gpt2-124m.train': reporters group test cases by class."""
    return ".".join(str(p) for p in ("mpbench", case.case.model, case.case.workload) if p)


def _metrics_text(case: CaseComparison) -> str:
    """One line per metric: change, p-value, significance."""
    lines = []
    for name, d in case.metrics.items():
        change = "from 0" if d.ratio is None else f"{d.change_pct:+.2f}%"
        p = f" p={d.p_value:.3g}" if d.p_value is not None else ""
        lines.append(
            f"{name}: {d.base:.6g} -> {d.current:.6g} ({change}{p}, significant: {d.significant})"
        )
    return "\n".join(lines)


def testcase_element(assessment: Assessment, case: CaseComparison) -> ET.Element:
    """The <testcase> of one case: failure for failing findings, skipped for skipped cases."""
    element = ET.Element(
        "testcase", {"classname": _classname(case), "name": case.case_id, "time": "0"}
    )
    findings = assessment.findings_for(case.case_id)
    failing = [f for f in findings if f.fails]
    if failing:
        failure = ET.SubElement(
            element,
            "failure",
            {"message": "; ".join(f.message for f in failing), "type": failing[0].kind},
        )
        failure.text = "\n".join(f"{f.what}: {f.message}" for f in failing)
    elif case.current_status == "skipped":
        ET.SubElement(
            element, "skipped", {"message": f"skipped in CURRENT: {case.current_reason or ''}"}
        )
    out = [f"{f.kind}: {f.what}: {f.message}" for f in findings if not f.fails]
    metrics = _metrics_text(case)
    if metrics:
        out.append(metrics)
    if out:
        ET.SubElement(element, "system-out").text = "\n".join(out)
    return element


def junit_tree(assessment: Assessment) -> ET.ElementTree:
    """The whole report: one <testsuite> named after the two runs."""
    comp = assessment.comparison
    cases = comp.cases
    failures = sum(1 for c in cases if assessment.outcome(c.case_id) == "fail")
    skipped = sum(
        1
        for c in cases
        if c.current_status == "skipped" and assessment.outcome(c.case_id) != "fail"
    )
    attrs = {
        "name": f"mpbench check {comp.current_label} vs {comp.base_label}",
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    root = ET.Element("testsuites", {k: attrs[k] for k in ("name", "tests", "failures", "errors")})
    suite = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("base", comp.base_label),
        ("current", comp.current_label),
        ("base_device", comp.base_device.label),
        ("current_device", comp.current_device.label),
        ("thresholds", assessment.config.describe()),
        *(("device_mismatch", m) for m in assessment.compatibility.mismatches),
        *(("difference", d) for d in assessment.compatibility.differences),
        *(("note", n) for n in assessment.notes),
    ):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for case in assessment.ordered_cases():
        suite.append(testcase_element(assessment, case))
    return ET.ElementTree(root)


def write_junit(assessment: Assessment, path: str | Path) -> None:
    """Write the JUnit XML file."""
    tree = junit_tree(assessment)
    ET.indent(tree)
    tree.write(Path(path), encoding="utf-8", xml_declaration=True)
