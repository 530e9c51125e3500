"""`tradebook db repair [--dry-run]`: rewrite what verify finds wrong from the trades.

For each portfolio whose positions (or their checkpoints), per-trade PnL, holding times or PnL
summary differ from its trades, ``PositionService.repair`` rewrites them in one transaction
(audited); balances follow, as they are summed from the summary. ``--dry-run`` lists the
differences and writes nothing. Equity snapshots are records of the past and are never
rewritten: verify reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dal.database import Database
from dal.scope import Actor


@dataclass
class RepairReport:
    dry_run: bool
    portfolios: int = 0
    repaired: dict[int, list[str]] = field(default_factory=dict)  # portfolio id → differences

    def lines(self) -> list[str]:
        verb = "would repair" if self.dry_run else "repaired"
        if not self.repaired:
            return [f"{self.portfolios} portfolio(s) checked: nothing to repair"]
        out = [f"{self.portfolios} portfolio(s) checked; {verb} {len(self.repaired)}:"]
        for pid, differences in sorted(self.repaired.items()):
            out.append(f"  portfolio #{pid}: {len(differences)} difference(s)")
            out += [f"    {d}" for d in differences[:20]]
            if len(differences) > 20:
                out.append(f"    … and {len(differences) - 20} more")
        return out


async def repair_database(url: str, dry_run: bool) -> RepairReport:
    db = Database(url)
    report = RepairReport(dry_run)
    try:
        async with db.session(Actor.system(), readonly=True) as s:
            ids = [p.id for p in await s.portfolios.list(include_archived=True)]
        report.portfolios = len(ids)
        for pid in ids:
            async with db.session(Actor.system()) as s:
                if dry_run:
                    differences = await s.positions.verify(pid)
                else:
                    differences = await s.positions.repair(pid)
            if differences:
                report.repaired[pid] = [str(d) for d in differences]
    finally:
        await db.dispose()
    return report
