"""Timeout precision: (close time - last instance time) / quiet period, p50/p99 over many series.

    .venv/bin/python load-tests/aggregator_timeouts.py [--series 120] [--quiet 2.0] [--timer 0.5]

Series start at random times over ``--spread`` seconds, each with a few instances a few hundred
ms apart, sent from several interleaved patients. "Last instance time" is when the broker
acknowledged the series' last instance; "close time" is the SeriesCompleted's ``occurred_at``
(the worker's decision) and, second figure, when a consumer of the series topic saw it
(after the transaction committed). Goal: p99 <= 1 + timer/quiet + 0.05.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregator_bench_common import bench_settings, broker, instance
from radstream.stream_apps.aggregator import AggregatorWorker

from radstream.devenv.process import exit_on_sigterm
from radstream.events.codec import codec_for
from radstream.events.models import SeriesCompleted


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=120)
    ap.add_argument("--quiet", type=float, default=2.0)
    ap.add_argument("--timer", type=float, default=0.5)
    ap.add_argument("--spread", type=float, default=20.0)
    args = ap.parse_args()
    with broker() as bootstrap:
        s = bench_settings(bootstrap, 3, series_quiet_s=args.quiet, patient_quiet_s=args.quiet * 2,
                           timer_interval_s=args.timer)
        codec = codec_for(s)
        worker = AggregatorWorker(s)
        wt = threading.Thread(target=worker.run, daemon=True)
        wt.start()
        seen: dict[str, tuple[float, float]] = {}  # series -> (decided at, seen by a consumer at)
        stop = threading.Event()

        def watch() -> None:
            c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{uuid.uuid4()}",
                          "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                          "fetch.wait.max.ms": 10})
            c.subscribe([s.topic("series")])
            while not stop.is_set():
                for m in c.consume(100, 0.05):
                    if not m.error():
                        ev = codec.decode(m.value())
                        assert isinstance(ev, SeriesCompleted)
                        seen[ev.series_instance_uid] = (ev.occurred_at.timestamp(), time.time())
            c.close()

        wc = threading.Thread(target=watch, daemon=True)
        wc.start()
        time.sleep(3.0)  # let both join their groups
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
        last_ack: dict[str, float] = {}

        def acked(series: str) -> object:
            def cb(err: object, msg: object) -> None:
                last_ack[series] = max(last_ack.get(series, 0.0), time.time())
            return cb

        rng = random.Random(7)
        plan = []  # (send time offset, patient, study, series, n)
        for k in range(args.series):
            start = rng.uniform(0, args.spread)
            for n in range(rng.randint(3, 12)):
                plan.append((start + n * rng.uniform(0.05, 0.4), f"pt-{k % 40}", f"st-{k}", f"se-{k}", n))
        plan.sort()
        t0 = time.time()
        for at, pk, st, se, n in plan:
            delay = t0 + at - time.time()
            if delay > 0:
                p.poll(delay)
            p.produce(s.topic("instances"), key=pk, value=codec.encode(instance(pk, st, se, n)), on_delivery=acked(se))
            p.poll(0)
        p.flush(30)
        deadline = time.time() + args.quiet * 3 + 30
        while len(seen) < args.series and time.time() < deadline:
            time.sleep(0.2)
        stop.set()
        worker.stop()
        wt.join(15)
        decided = [(seen[k][0] - last_ack[k]) / args.quiet for k in seen]
        observed = [(seen[k][1] - last_ack[k]) / args.quiet for k in seen]
        goal = 1 + args.timer / args.quiet + 0.05
        print(f"{len(seen)}/{args.series} series closed; quiet {args.quiet}s, timer {args.timer}s; "
              f"goal p99 <= {goal:.3f}")
        print(f"decision (occurred_at):   p50 {pct(decided, .5):.3f}  p99 {pct(decided, .99):.3f}  "
              f"min {min(decided):.3f}  max {max(decided):.3f}")
        print(f"visible to a consumer:    p50 {pct(observed, .5):.3f}  p99 {pct(observed, .99):.3f}  "
              f"max {max(observed):.3f}")


if __name__ == "__main__":
    exit_on_sigterm()
    main()
