"""Writes the README's SVG screenshots by driving the real app headless.

By default from a live `--demo` run (root, the live engine, real traffic in private
namespaces); `--replay FILE` makes them from a recording instead, without root.

    python screenshots/make_screenshots.py [--replay FILE] [--out screenshots/]

Shots: main.svg (flows by send rate), detail_waterfall.svg (sorted by retransmissions,
the lossy flow selected), filter.svg (the filter bar with an inline error), help.svg,
listeners.svg (l: the demo's listener whose accept queue overflows on top), failures.svg
(f: failed connects by destination), groups.svg (g: flows grouped by process, one open).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcptop.frontends.screen.app import TcptopApp  # noqa: E402
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine

SIZE = (160, 46)


async def shoot(app: TcptopApp, out: Path, live: bool) -> list[Path]:
    written: list[Path] = []

    def save(name: str) -> None:
        app.save_screenshot(filename=name, path=str(out))
        written.append(out / name)

    async with app.run_test(size=SIZE) as pilot:
        if live:
            # Long enough for rates, sparklines and the lossy flow's retransmissions.
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                await pilot.pause(0.25)
        else:
            while app.store.snapshot is None:
                await pilot.pause(0.05)
            for _ in range(4):
                await pilot.press("n")
                await pilot.pause(0.1)
        save("main.svg")
        await pilot.press("R")
        app.table.select_index(0)
        await pilot.pause(1.5 if live else 0.2)
        save("detail_waterfall.svg")
        await pilot.press("slash", "ctrl+u", *"port 5002 and")  # the bar opens holding the current filter
        await pilot.pause(0.2)
        save("filter.svg")
        await pilot.press("escape", "question_mark")
        await pilot.pause(0.2)
        save("help.svg")
        await pilot.press("escape")
        if live:  # the filter shot's Escape cleared it: the demo's flows only again
            await pilot.press("slash", *app.demo_filter, "enter")
        await pilot.press("l")
        await pilot.pause(1.5 if live else 0.2)
        save("listeners.svg")
        await pilot.press("f")
        await pilot.pause(1.5 if live else 0.2)
        save("failures.svg")
        await pilot.press("g")  # back to the flows, grouped by process
        await pilot.pause(1.5 if live else 0.2)
        await pilot.press("e")
        await pilot.pause(1.5 if live else 0.2)
        save("groups.svg")
        await pilot.press("q")
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay", metavar="FILE", help="make the shots from a recording (no root needed)")
    ap.add_argument("--out", default=str(ROOT / "screenshots"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replay:
        from tcptop.replay import ReplaySource
        app = TcptopApp(ReplaySource(args.replay), start_paused=True)
        written = asyncio.run(shoot(app, out, live=False))
    else:
        from tcptop.demo import Demo
        demo = Demo()
        source = None
        try:
            source = CoreEngine(EngineOptions(interval_s=1.0))  # first, so the demo's flows are seen from birth
            demo.start()
            app = TcptopApp(source, filter_expr=demo.filter_expression())
            app.demo_filter = demo.filter_expression()
            written = asyncio.run(shoot(app, out, live=True))
        finally:
            if source is not None:
                source.close()
            demo.stop()
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
