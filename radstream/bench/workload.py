"""The load: a compressed clinical day of brain MR, abdominal CT and pelvis radiograph exams.

Scale (honest): the paper streams a ~1 GB brain MR over 40 minutes and sends radiograph
exams of five 5 MB images. A 2-core machine cannot replay that in CI minutes, so at "1x"
the day is compressed: an MR exam streams over ``mr_stream_s`` seconds (default 60, i.e.
40x faster than the paper's scanner), a CT over ``ct_stream_s``, a radiograph exam's
images arrive within ``dx_stream_s``; each scanner starts a new exam every ``*_every_s``.
Image sizes are parameters (``--mr-shape``, ``--dx-size``; the paper's radiograph is
``--dx-size 1600x1600``). ``speed`` divides every duration and interval: 10x is ten times
the instance rate and the exam rate of 1x over the same wall-clock window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIND_PIPELINE = {"brain_mr": "brain-tumour", "liver_ct": "liver", "pelvis_dx": "hip-fracture"}


@dataclass
class DayPlan:
    window_s: float = 180.0  # wall-clock seconds during which scanners start exams
    speed: float = 1.0
    mr_scanners: int = 2
    ct_scanners: int = 1
    dx_rooms: int = 2
    mr_every_s: float = 90.0
    ct_every_s: float = 60.0
    dx_every_s: float = 30.0
    mr_stream_s: float = 60.0
    ct_stream_s: float = 20.0
    dx_stream_s: float = 5.0
    mr_shape: tuple[int, int, int] = (32, 128, 128)  # slices, rows, columns
    ct_shape: tuple[int, int, int] = (40, 128, 128)
    dx_size: tuple[int, int] = (512, 512)
    dx_images: int = 5
    kinds: tuple[str, ...] = ("brain_mr", "liver_ct", "pelvis_dx")
    seed: int = 1000

    def scanners(self) -> list[Scanner]:
        out = []
        for kind, count, every, stream in (
            ("brain_mr", self.mr_scanners, self.mr_every_s, self.mr_stream_s),
            ("liver_ct", self.ct_scanners, self.ct_every_s, self.ct_stream_s),
            ("pelvis_dx", self.dx_rooms, self.dx_every_s, self.dx_stream_s),
        ):
            if kind not in self.kinds:
                continue
            for i in range(count):
                ae = f"{kind.split('_')[1].upper()}{i + 1:02d}"  # MR01, CT01, DX01 ...
                out.append(Scanner(ae, kind, every / self.speed, stream / self.speed,
                                   offset_s=(i + 0.5) * every / self.speed / max(count, 1)))
        return out

    def exam_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sc in self.scanners():
            counts[sc.kind] = counts.get(sc.kind, 0) + len(sc.start_times(self.window_s))
        return counts


@dataclass
class Scanner:
    calling_ae: str
    kind: str
    every_s: float  # wall clock, already divided by the speed
    stream_s: float
    offset_s: float = 0.0
    exams: list[Exam] = field(default_factory=list)

    def start_times(self, window_s: float) -> list[float]:
        times, t = [], self.offset_s
        while t < window_s:
            times.append(t)
            t += self.every_s
        return times


@dataclass
class Exam:
    kind: str
    pipeline: str
    study_instance_uid: str
    files: list[Path]
    sop_instance_uids: list[str]
    start_s: float = 0.0
    stream_s: float = 0.0
    calling_ae: str = ""

    def due_times(self) -> list[float]:
        """Wall-clock offsets (from the run's start) at which each instance is sent: evenly spread."""
        n = len(self.files)
        step = self.stream_s / max(n - 1, 1) if n > 1 else 0.0
        return [self.start_s + i * step for i in range(n)]


def build_exams(plan: DayPlan, root: Path) -> list[Scanner]:
    """Write the synthetic studies (once per plan shape, cached under ``root``) and assign them to scanners."""
    from radstream.synth.generate import GROUND_TRUTH_FILE, SynthConfig, load_truth, synthesize

    scanners = plan.scanners()
    need = {k: 0 for k in ("brain_mr", "liver_ct", "pelvis_dx")}
    for sc in scanners:
        need[sc.kind] += len(sc.start_times(plan.window_s))
    shape_tag = (f"mr{'x'.join(map(str, plan.mr_shape))}-ct{'x'.join(map(str, plan.ct_shape))}-"
                 f"dx{'x'.join(map(str, plan.dx_size))}x{plan.dx_images}-s{plan.seed}")
    out = root / f"{shape_tag}-b{need['brain_mr']}-l{need['liver_ct']}-h{need['pelvis_dx']}"
    if not (out / GROUND_TRUTH_FILE).exists():
        synthesize(out, SynthConfig(seed=plan.seed, brain_patients=need["brain_mr"], liver_patients=need["liver_ct"],
                                    hip_patients=need["pelvis_dx"], timepoints=1, mr_shape=plan.mr_shape,
                                    ct_shape=plan.ct_shape, dx_size=plan.dx_size, dx_images=plan.dx_images))
    studies: dict[str, list[dict[str, Any]]] = {k: [] for k in need}
    for s in load_truth(out)["studies"]:
        studies[s["kind"]].append(s)
    for sc in scanners:
        for t in sc.start_times(plan.window_s):
            s = studies[sc.kind].pop()
            files = [out / f for se in s["series"] for f in se["files"]]
            sops = [u for se in s["series"] for u in se["sop_instance_uids"]]
            sc.exams.append(Exam(sc.kind, KIND_PIPELINE[sc.kind], s["study_instance_uid"], files, sops,
                                 start_s=t, stream_s=sc.stream_s, calling_ae=sc.calling_ae))
    return scanners
