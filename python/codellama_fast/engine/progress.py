"""A small progress bar on stderr for long work (loading, converting). Silent when not a terminal
unless forced, so logs and pipes stay clean."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: float, unit: str | None = None, scale: float | None = None, enabled: bool | None = None) -> None:
        if unit is None:  # bytes: GB for big jobs, MB otherwise
            unit, scale = ("GB", 1e9) if total >= 1e9 else ("MB", 1e6)
        self.label, self.total, self.unit, self.scale = label, max(total, 1e-9), unit, scale or 1.0
        self.done = 0.0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, amount: float) -> None:
        self.done += amount
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            rate = self.done / self.scale / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r{self.label}: [{bar:<30}] {frac * 100:5.1f}% {self.done / self.scale:.2f}/{self.total / self.scale:.2f} {self.unit} ({rate:.2f} {self.unit}/s)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
