"""`radstream demo`: the main job end to end on one machine.

Brings up the local infrastructure (Kafka, PostgreSQL, Triton on the CPU) and every radstream
process, writes synthetic exams with known ground truth, sends them to the DICOM port like a
scanner would, waits for the results in PostgreSQL, and prints them with the longitudinal
changes next to the ground truth. The models are the bundled reference models, which are
built to be right on the synthetic studies; they are not clinical models.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radstream.devenv.services import DEVELOPMENT_ENV
from radstream.settings import Settings

KIND_PIPELINE = {"brain_mr": "brain-tumour", "liver_ct": "liver", "pelvis_dx": "hip-fracture"}
VOLUME_TOLERANCE_PCT = 3.0
# A real network on a real image: deepbet on Colin27 (Debian mricron-data), compared with the BET mask
# shipped with it, sent as a reference segmentation. deepbet's own run_bet gives Dice 0.936 against it.
COLIN27 = Path("/usr/share/mricron/templates")
BRAIN_EXTRACTION = "brain-extraction"
REFERENCE_SOURCE, REFERENCE_AE = "ch2bet", "DEMO-REF-BET"
COLIN27_MIN_DICE = 0.93


@dataclass
class DemoPlan:
    brain_patients: int = 2
    brain_timepoints: int = 3
    liver_patients: int = 1
    hip_patients: int = 2
    seed: int = 7
    series_quiet_s: float = 5.0
    patient_quiet_s: float = 10.0
    timeout_s: float = 900.0
    colin27: bool = True  # also deepbet brain extraction on Colin27 (when mricron-data is installed)


@dataclass
class Row:
    kind: str
    pipeline: str
    patient: str
    timepoint: int
    study_date: str
    status: str = "waiting"
    measured: dict[str, float] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    change_baseline_pct: float | None = None
    change_prior_pct: float | None = None
    progression: bool | None = None
    ok: bool = False
    note: str = ""


def demo_env(plan: DemoPlan) -> dict[str, str]:
    """Settings the demo's processes get on top of the user's: development (random secrets under
    ``<home>/secrets/`` in place of the public placeholders), short quiet periods so it ends soon."""
    return {
        **DEVELOPMENT_ENV,
        "RADSTREAM_AGGREGATOR__SERIES_QUIET_S": str(plan.series_quiet_s),
        "RADSTREAM_AGGREGATOR__PATIENT_QUIET_S": str(plan.patient_quiet_s),
    }


def write_studies(root: Path, plan: DemoPlan) -> list[dict[str, Any]]:
    """Synthetic studies (MR of 2 patients x 3 timepoints, CT, pelvis radiographs) with ground truth."""
    from radstream.synth.generate import GROUND_TRUTH_FILE, SynthConfig, load_truth, synthesize

    out = root / f"synth-seed{plan.seed}"
    if not (out / GROUND_TRUTH_FILE).exists():
        # brain patients get several timepoints; liver and hips one exam per patient each time
        synthesize(out / "brain", SynthConfig(seed=plan.seed, brain_patients=plan.brain_patients,
                                              liver_patients=0, hip_patients=0, timepoints=plan.brain_timepoints))
        synthesize(out / "other", SynthConfig(seed=plan.seed + 1, brain_patients=0,
                                              liver_patients=plan.liver_patients, hip_patients=plan.hip_patients,
                                              timepoints=1))
        (out / GROUND_TRUTH_FILE).write_text("done\n")
    studies = []
    for part in ("brain", "other"):
        for s in load_truth(out / part)["studies"]:
            s["root"] = str(out / part)
            studies.append(s)
    return studies


def create_accounts(settings: Settings, folder: Path) -> dict[str, str]:
    """One account per role for the review app, with random passwords kept in a 0600 file."""
    from radstream.db.connect import connect
    from radstream.web.users import add_user, get_user

    accounts_file = folder / "accounts.txt"
    if accounts_file.exists():
        return dict(line.split(" ", 1) for line in accounts_file.read_text().splitlines() if " " in line)
    accounts = {}
    with connect(settings, autocommit=True) as conn:
        for name, role in (("demo-admin", "admin"), ("demo-reader", "reader"), ("demo-qc", "qc")):
            if get_user(conn, name) is None:
                password = secrets.token_urlsafe(12)
                add_user(conn, name, role, password, f"Demo {role}")
                accounts[name] = password
    folder.mkdir(parents=True, exist_ok=True)
    accounts_file.touch(mode=0o600)
    accounts_file.write_text("".join(f"{k} {v}\n" for k, v in accounts.items()))
    return accounts


def collect(settings: Settings, studies: list[dict[str, Any]]) -> list[Row]:
    """Results in PostgreSQL for each synthetic study, checked against its ground truth."""
    from radstream.db.connect import connect
    from radstream.patient_key import patient_key
    from radstream.secrets import site_secret

    secret = site_secret(settings)  # the one the ingest process keys with (same home, same store)
    rows = []
    with connect(settings) as conn:
        for s in sorted(studies, key=lambda s: (s["kind"], s["patient_id"], s["timepoint"])):
            pipeline = KIND_PIPELINE[s["kind"]]
            row = Row(s["kind"], pipeline, patient_key(secret, s["patient_id"], s["issuer"])[:8],
                      s["timepoint"] + 1, s["study_date"])
            rows.append(row)
            res = conn.execute(
                "SELECT result_id, status, reason, study_date FROM results WHERE study_instance_uid = %s"
                " AND pipeline = %s AND NOT shadow ORDER BY finished_at DESC LIMIT 1",
                (s["study_instance_uid"], pipeline),
            ).fetchone()
            if res is None:
                continue
            result_id, row.status, reason, stored_date = res
            # the date the result carries (from the instances, through every step), not the truth file's
            row.study_date = stored_date.strftime("%Y%m%d") if stored_date is not None else "-"
            date_ok = row.study_date == s["study_date"]
            if row.status != "completed":
                row.note = str(reason or "")[:60]
                continue
            if s["kind"] == "pelvis_dx":
                labels: dict[str, str] = {}
                for label, finding in conn.execute(
                    "SELECT label, finding FROM detections WHERE result_id = %s ORDER BY idx", (result_id,)
                ).fetchall():
                    labels.setdefault(label, finding)
                row.expected = dict(s["truth"]["hips"])
                row.measured = {}
                got = {side: next((f for lab, f in labels.items() if side in lab.lower()), None)
                       for side in row.expected}
                row.ok = got == row.expected and date_ok
                row.note = ", ".join(f"{side} {got[side]} (truth {row.expected[side]})" for side in row.expected)
                if not date_ok:
                    row.note += f"; study date {row.study_date} (truth {s['study_date']})"
                continue
            row.expected = dict(s["truth"]["volumes_ml"])
            row.measured = {
                label: value for label, value in conn.execute(
                    "SELECT label, value FROM measurements WHERE result_id = %s AND unit = 'mL'", (result_id,)
                ).fetchall()
            }
            errors = [abs(row.measured.get(k, float("nan")) - v) / v * 100 for k, v in row.expected.items() if v]
            row.ok = bool(errors) and all(e <= VOLUME_TOLERANCE_PCT for e in errors) and date_ok
            row.note = f"max error {max(errors):.1f}%" if errors else ""
            if not date_ok:
                row.note += f"; study date {row.study_date} (truth {s['study_date']})"
            lon = conn.execute(
                "SELECT change_from_baseline_pct, change_from_prior_pct, progression FROM v_longitudinal "
                "WHERE result_id = %s ORDER BY label LIMIT 1",
                (result_id,),
            ).fetchone()
            if lon:
                row.change_baseline_pct, row.change_prior_pct, row.progression = lon
    return rows


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:+.1f}%"


def format_table(rows: list[Row]) -> str:
    measured_text = [", ".join(f"{k} {v:.1f} mL" for k, v in sorted(r.measured.items())) for r in rows]
    width = max([len("measured"), *map(len, measured_text)])
    head = f"{'pipeline':<13} {'patient':<9} {'tp':>2} {'date':<9} {'status':<10} {'measured':<{width}} " \
           f"{'Δbaseline':>9} {'Δprior':>8} {'prog':<5} {'ok':<3} note"
    lines = [head, "-" * len(head)]
    for r, measured in zip(rows, measured_text, strict=True):
        prog = "" if r.progression is None else ("YES" if r.progression else "no")
        lines.append(
            f"{r.pipeline:<13} {r.patient:<9} {r.timepoint:>2} {r.study_date:<9} {r.status:<10} {measured:<{width}} "
            f"{_pct(r.change_baseline_pct):>9} {_pct(r.change_prior_pct):>8} {prog:<5} {'✓' if r.ok else '✗':<3} "
            f"{r.note}"
        )
    return "\n".join(lines)


DEMO_SOURCES = {"expert": "DEMO-EXPERT", "novice": "DEMO-NOVICE"}


def blinded_study(settings: Settings, studies: list[dict[str, Any]], folder: Path,
                  timeout_s: float = 120.0) -> tuple[bool, str]:
    """The paper's blinded liver study on the demo's exams: an expert's and a novice's segmentation
    of each liver CT, made by the stand-in segmentation tool and sent by C-STORE from each source's
    AE title; then the lead's unblinded agreement table. True when the expert agrees with the model."""
    from radstream.db.connect import connect
    from radstream.db.segmentations import add_source
    from radstream.producers.scu import send_paths
    from radstream.synth.human_seg import human_segmentation
    from radstream.web.blinded import format_study_report, study_report
    from radstream.web.viewer import ImageCache

    liver = [s for s in studies if s["kind"] == "liver_ct"]
    with connect(settings, autocommit=True) as conn:
        for name, ae in DEMO_SOURCES.items():
            with contextlib.suppress(ValueError):  # registered by an earlier run
                add_source(conn, name, calling_ae_title=ae, description=f"demo {name} (synthetic)", created_by="demo")
    for s in liver:
        series_dir = (Path(s["root"]) / s["series"][0]["files"][0]).parent
        for style, ae in DEMO_SOURCES.items():
            seg = human_segmentation(series_dir, folder / "human-segs" / f"{s['accession_number']}-{style}.dcm",
                                     style=style, reader=f"{style.title()}^Demo")  # type: ignore[arg-type]
            send_paths([str(seg)], host="127.0.0.1", port=settings.dicom.port, called_ae=settings.dicom.ae_title,
                       calling_ae=ae, associations=1)
    want = {s["study_instance_uid"] for s in liver}
    deadline = time.monotonic() + timeout_s
    with connect(settings, autocommit=True) as conn:
        while time.monotonic() < deadline:
            n = conn.execute("SELECT count(*) FROM segmentations WHERE status = 'valid' "
                             "AND study_instance_uid = ANY(%s)", (list(want),)).fetchone()
            if n is not None and n[0] >= len(want) * len(DEMO_SOURCES):
                break
            time.sleep(1)
        report = study_report(ImageCache(settings), conn, "liver")
    model = [a for a in report["agreement"] if a["source_b"].startswith("model:") and a["source_a"] == "expert"]
    ok = bool(model) and all(a["mean_dice"] is not None and a["mean_dice"] >= 0.99 for a in model)
    return ok, format_study_report(report)


@dataclass(frozen=True)
class RealExam:
    """Colin27 as a DICOM series, its reference SEG (ch2bet), and where deepbet's models are served from."""

    files: list[Path]
    study_uid: str
    reference_seg: Path
    repository: Path


def prepare_colin27(folder: Path) -> RealExam:
    """Colin27 written as DICOM with its reference SEG, and a model repository with the reference models
    and deepbet's networks (its wheel fetched from PyPI once into the cache)."""
    from radstream.models import deepbet
    from radstream.models.build import build_repository
    from radstream.synth.nifti import nifti_mask_to_seg, nifti_to_dicom

    repository = folder / "triton"
    if not (repository / deepbet.BRAIN_MODEL).exists():
        build_repository(repository)
        deepbet.build_repository(repository)
    series = nifti_to_dicom(COLIN27 / "ch2.nii.gz", folder / "colin27", patient_id="COLIN27",
                            patient_name="COLIN^27", series_description="T1 3D Colin27")
    seg = folder / "colin27-reference" / "ch2bet-seg.dcm"
    if not seg.exists():
        nifti_mask_to_seg(COLIN27 / "ch2bet.nii.gz", series, seg)
    return RealExam(series.files, series.study_uid, seg, repository)


def real_exam_row(settings: Settings, exam: RealExam) -> Row:
    """The Colin27 result, its brain volume and its Dice against the reference (ch2bet)."""
    from radstream.db.connect import connect
    from radstream.report.reference import reference_pairs
    from radstream.web.viewer import ImageCache

    row = Row("colin27", BRAIN_EXTRACTION, "COLIN27", 1, "")
    with connect(settings, autocommit=True) as conn:
        found = conn.execute("""SELECT r.status, r.study_date, r.reason FROM results r
                                JOIN v_worklist w USING (result_id)
                                WHERE r.study_instance_uid = %s AND r.pipeline = %s
                                  AND w.superseded_by_result_id IS NULL""",
                             (exam.study_uid, BRAIN_EXTRACTION)).fetchone()
        if found is None:
            return row
        row.status, row.study_date = str(found[0]), str(found[1] or "").replace("-", "")
        if row.status != "completed":
            row.note = str(found[2] or "")[:80]
            return row
        pairs = [p for p in reference_pairs(ImageCache(settings), conn, BRAIN_EXTRACTION)
                 if p.study_instance_uid == exam.study_uid and p.reference == REFERENCE_SOURCE]
    if not pairs:
        row.status = "waiting"  # the result is there, the reference SEG not registered yet
        return row
    p = pairs[0]
    row.measured = {p.label: p.model_ml}
    row.ok = p.dice is not None and p.dice >= COLIN27_MIN_DICE
    row.note = (f"Dice {p.dice:.3f} vs {REFERENCE_SOURCE} (BET; deepbet's own 0.936), "
                f"{REFERENCE_SOURCE} {p.reference_ml:.1f} mL")
    return row


def run_demo(settings: Settings, plan: DemoPlan, echo: Callable[[str], None], stop: bool = False) -> bool:
    """Run the whole job; True when every result is there and agrees with the ground truth."""

    from radstream.db.migrate import migrate
    from radstream.devenv.process import port_open, wait_until
    from radstream.devenv.services import radstream_services
    from radstream.devenv.stack import LocalStack
    from radstream.kafka.topics import create_topics
    from radstream.producers.scu import send_paths

    # the demo is a development run: its processes (and this one) use the random secrets under <home>/secrets/
    settings = settings.model_copy(update={"environment": "development"})
    home = Path(settings.home).resolve()
    demo_dir = home / "demo"
    extra_env: dict[str, str] = {}
    real: RealExam | None = None
    if plan.colin27 and (COLIN27 / "ch2.nii.gz").exists():
        echo("0/6 a real model: deepbet (PyPI wheel -> ONNX) and Colin27 (Debian mricron-data) as DICOM ...")
        real = prepare_colin27(demo_dir)
        pipelines = [p for p in settings.pipeline_names() if p != BRAIN_EXTRACTION] + [BRAIN_EXTRACTION]
        settings = settings.model_copy(update={
            "pipelines": pipelines, "triton": settings.triton.model_copy(update={"model_repository": real.repository})})
        extra_env = {"RADSTREAM_PIPELINES": json.dumps(pipelines),
                     "RADSTREAM_TRITON__MODEL_REPOSITORY": str(real.repository)}
    stack = LocalStack(settings)
    echo("1/6 infrastructure: Kafka (KRaft), PostgreSQL, Triton (CPU, reference models) ...")
    t0 = time.monotonic()
    stack.up(triton=True)
    create_topics(settings)
    migrate(settings)
    echo(f"    up in {time.monotonic() - t0:.0f}s")

    echo("2/6 radstream processes: ingest, aggregate, dispatch, infer x3, sinks, web ...")
    started = stack.services.start(radstream_services(settings, {**demo_env(plan), **extra_env}))
    wait_until(lambda: port_open("127.0.0.1", settings.dicom.port), 120, what="the DICOM port")
    wait_until(lambda: port_open(settings.web.host, settings.web.port), 120, what="the web app")
    echo(f"    running: {', '.join(sorted(stack.services.running()))}" + ("" if started else " (already up)"))

    echo("3/6 synthetic exams with ground truth ...")
    studies = write_studies(demo_dir, plan)
    accounts = create_accounts(settings, demo_dir)
    n_files = sum(len(se["files"]) for s in studies for se in s["series"])
    echo(f"    {len(studies)} studies, {n_files} instances in {demo_dir}")

    echo("4/6 sending them to the DICOM port (C-STORE) ...")
    sent_failures = 0
    for s in sorted(studies, key=lambda s: (s["timepoint"], s["kind"])):
        files = [str(Path(s["root"]) / f) for se in s["series"] for f in se["files"]]
        summary = send_paths(files, host="127.0.0.1", port=settings.dicom.port,
                             called_ae=settings.dicom.ae_title, calling_ae="DEMO-SCANNER", associations=2)
        sent_failures += sum(1 for r in summary.results if r.status != 0)
    if real is not None:
        from radstream.db.connect import connect
        from radstream.db.segmentations import add_source

        with connect(settings, autocommit=True) as conn, contextlib.suppress(ValueError):  # an earlier run's
            add_source(conn, REFERENCE_SOURCE, kind="reference", calling_ae_title=REFERENCE_AE,
                       description="FSL BET brain mask shipped with Colin27", created_by="demo")
        for paths, ae in ((real.files, "DEMO-SCANNER"), ([real.reference_seg], REFERENCE_AE)):
            summary = send_paths([str(f) for f in paths], host="127.0.0.1", port=settings.dicom.port,
                                 called_ae=settings.dicom.ae_title, calling_ae=ae, associations=2)
            sent_failures += sum(1 for r in summary.results if r.status != 0)
            n_files += len(paths)
    echo(f"    sent {n_files} instances, {sent_failures} not acknowledged")

    echo(f"5/6 waiting for results (series close after {plan.series_quiet_s:.0f}s quiet, "
         f"patients after {plan.patient_quiet_s:.0f}s; production default 60s) ...")
    deadline = time.monotonic() + plan.timeout_s
    last = -1
    rows: list[Row] = []
    while time.monotonic() < deadline:
        rows = collect(settings, studies)
        if real is not None:
            rows.append(real_exam_row(settings, real))
        done = sum(1 for r in rows if r.status != "waiting")
        if done != last:
            echo(f"    results {done}/{len(rows)}")
            last = done
        if done == len(rows):
            break
        time.sleep(2)

    study_ok, study_table = True, ""
    if any(s["kind"] == "liver_ct" for s in studies):
        echo("    blinded liver study: an expert's and a novice's segmentation per exam, by C-STORE from their tools")
        study_ok, study_table = blinded_study(settings, studies, demo_dir)

    echo("6/6 results (reference models on synthetic phantoms; truth from the generator):")
    echo(format_table(rows))
    if study_table:
        echo("\nBlinded liver study (the lead's unblinded report; readers rate each segmentation by its hash):")
        echo(study_table)
        if not study_ok:
            echo("THE EXPERT'S SEGMENTATION DOES NOT AGREE WITH THE MODEL'S (Dice < 0.99)")
    ok = bool(rows) and all(r.ok for r in rows) and study_ok
    echo("ALL RESULTS AGREE WITH THE GROUND TRUTH" if ok else "SOME RESULTS ARE MISSING OR WRONG")
    if stop:
        echo("stopping everything (--stop) ...")
        stack.down()
    else:
        echo(f"\nReview app: http://{settings.web.host}:{settings.web.port}/  accounts: "
             + ", ".join(f"{k} / {v}" for k, v in accounts.items())
             + f" (kept in {demo_dir / 'accounts.txt'})")
        echo("Everything keeps running; `radstream dev status` lists it, `radstream dev down` stops it.")
    return ok
