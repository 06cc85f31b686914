"""What the fault suites share: a small load per fault (a brain MR, an abdominal CT and a pelvis
radiograph exam from three scanners, paced over a few seconds), the fault landing while that load is
in its path, and the counts afterwards: every instance the SCP acknowledged is on ``instances`` and in
the store; every study completed; exactly one result or failure per study and matching pipeline; no
duplicate result rows. One line per fault is printed (``pytest -s`` shows them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from radstream.bench.checks import FaultCount, count_after_fault
from radstream.bench.measure import fetch_results
from radstream.bench.scanners import ScannerFleet
from radstream.bench.stack import BenchStack
from radstream.bench.workload import KIND_PIPELINE, Exam, Scanner
from tests.waiting import eventually

STREAM_S = 4.0
Action = Callable[[BenchStack], None]


def fault_exams(out: Path, n: int, seed: int) -> dict[str, list[Exam]]:
    """``n`` small exams of each kind (one set per fault)."""
    from radstream.synth.generate import SynthConfig, load_truth, synthesize

    synthesize(out, SynthConfig(seed=seed, brain_patients=n, liver_patients=n, hip_patients=n, timepoints=1,
                                mr_shape=(24, 64, 64), ct_shape=(24, 64, 64), dx_size=(256, 256), dx_images=3))
    by_kind: dict[str, list[Exam]] = {k: [] for k in KIND_PIPELINE}
    for s in load_truth(out)["studies"]:
        files = [out / f for se in s["series"] for f in se["files"]]
        sops = [u for se in s["series"] for u in se["sop_instance_uids"]]
        by_kind[s["kind"]].append(Exam(s["kind"], KIND_PIPELINE[s["kind"]], s["study_instance_uid"], files, sops,
                                       stream_s=STREAM_S))
    return by_kind


def phase_load(exams: dict[str, list[Exam]], i: int) -> list[Scanner]:
    scanners = []
    for kind, ae in (("brain_mr", "MR01"), ("liver_ct", "CT01"), ("pelvis_dx", "DX01")):
        ex = exams[kind][i]
        ex.calling_ae = ae
        scanners.append(Scanner(ae, kind, every_s=0.0, stream_s=STREAM_S, exams=[ex]))
    return scanners


def down(stack: BenchStack) -> list[str]:
    return [n for n in stack.specs if not stack.services.process(n).running()]


def fault_under_load(stack: BenchStack, exams: dict[str, list[Exam]], index: int, name: str, at_s: float,
                     action: Action, settle_s: float, results_timeout_s: float = 150.0) -> FaultCount:
    """Send phase ``index``'s load, land ``action`` ``at_s`` seconds after its first instance, wait for a
    result per study, look again ``settle_s`` later for duplicates, and assert the counts."""
    assert not down(stack), f"processes down before the fault: {down(stack)}"
    scanners = phase_load(exams, index)
    fleet = ScannerFleet(scanners, stack.dicom_port, retry_s=1.0, give_up_s=120.0)
    studies = {ex.study_instance_uid: ex.pipeline for sc in scanners for ex in sc.exams}
    sender = fleet.start()
    fault_errors: list[BaseException] = []

    def inject() -> None:
        try:
            time.sleep(max(0.0, at_s - (time.monotonic() - fleet.ledger.t0)))
            action(stack)
        except BaseException as exc:
            fault_errors.append(exc)

    injector = threading.Thread(target=inject, name="fault", daemon=True)
    injector.start()
    sender.join(180)
    injector.join(240)
    assert not fault_errors, fault_errors
    assert not sender.is_alive(), "the scanners did not finish"

    def all_results() -> bool:
        have = {(r.study_instance_uid, r.pipeline) for r in fetch_results(stack.settings)}
        return {(s, p) for s, p in studies.items()} <= have

    try:
        eventually(all_results, timeout=results_timeout_s, interval=1.0, what=f"a result per study after '{name}'")
    finally:
        # a second look a little later catches duplicates that arrive after the first result
        time.sleep(settle_s)
        sops = {sop for sc in scanners for ex in sc.exams for sop in ex.sop_instance_uids}
        count = count_after_fault(name, stack.settings, fleet.ledger.sent() & sops, fleet.ledger.acked() & sops,
                                  studies)
        print("\n" + count.line(), flush=True)
    assert count.sent == len(sops)
    assert count.acked == count.sent, "the scanners gave up on some instances"
    assert count.acked_not_found == [], f"acknowledged but not on the topic / in the store: {count.acked_not_found}"
    assert count.studies_completed == count.studies
    assert count.missing_results == []
    assert count.results == len(studies) and count.duplicates == 0
    assert not down(stack), f"processes down after the fault: {down(stack)}"
    return count
