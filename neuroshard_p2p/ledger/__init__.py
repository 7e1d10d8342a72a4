"""The ledger: receipts settle into SQLite with a burn, conserving every nano-NEURO.

- `checks`: sans-IO acceptance of a provider's receipt against the job a gateway matched.
- `store`: `Ledger`, the SQLite file (WAL, synchronous=FULL, one transaction per settlement),
  `verify()` and the CLI hooks `ledger_summary` / `ledger_verify`.
- `aio`: `AsyncLedger`, the same calls for trio, run in a worker thread.
"""

from neuroshard_p2p.ledger.aio import AsyncLedger
from neuroshard_p2p.ledger.checks import (
    REASONS,
    STORAGE,
    LedgerError,
    MatchedJob,
    check_receipt,
)
from neuroshard_p2p.ledger.store import (
    LEDGER_FILE,
    ROLES,
    Ledger,
    LedgerTotals,
    SettlementRecord,
    VerifyReport,
    ledger_path,
    ledger_summary,
    ledger_verify,
)

__all__ = [
    "Ledger", "AsyncLedger", "LedgerError", "MatchedJob", "check_receipt", "LedgerTotals",
    "SettlementRecord", "VerifyReport", "ledger_path", "ledger_summary", "ledger_verify",
    "LEDGER_FILE", "ROLES", "REASONS", "STORAGE",
]
