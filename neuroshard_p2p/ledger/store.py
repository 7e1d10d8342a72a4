"""The ledger: settlements in one SQLite file, conserved to the nano-NEURO and safe across crashes.

One row per settled receipt, written in one transaction together with the running totals and the
per-user / per-provider accounts, so after any crash the file holds either all of a settlement or
none of it. The invariant, checked by `verify()`:

    Σ payment == Σ earned + Σ burned          (and per row: payment == earned + burned)

and every row traces to a receipt whose stored bytes still decode, carry the provider's valid
signature and recompute (money.settle_amounts) to exactly the stored amounts.

Durability: WAL journal with `synchronous=FULL`, so COMMIT returns only after the WAL is fsynced.
A settlement that `settle()` returned for is on disk even if the machine loses power right after
(NORMAL would only survive a process crash, not a power cut, and an acknowledged settlement that
vanishes is exactly what the ledger must not allow). NORMAL is offered for tests and benchmarks.

Replay is impossible even across restarts: `receipt_id` (SHA-256 of the signed bytes) is UNIQUE,
and so is (role, gateway, request_id), so a provider cannot settle one request twice by re-signing
its receipt with a new timestamp.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.ledger.checks import (
    MALFORMED,
    OVERFLOW,
    RATE_WINDOW_S,
    REASONS,
    REPLAY,
    STORAGE,
    LedgerError,
    MatchedJob,
    amounts_of,
    check_receipt,
    decode_receipt,
)
from neuroshard_p2p.money import Settlement, from_nano, settle_amounts
from neuroshard_p2p.wire import Receipt, WireError

#: File name of the ledger inside a node's data dir.
LEDGER_FILE = "ledger.sqlite3"
SCHEMA_VERSION = 1
ROLES = ("gateway", "provider")
SYNCHRONOUS_MODES = ("FULL", "NORMAL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settlements (
    id          INTEGER PRIMARY KEY,
    receipt_id  BLOB    NOT NULL UNIQUE CHECK (length(receipt_id) = 32),
    request_id  TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('gateway', 'provider')),
    user        TEXT    NOT NULL,
    provider    BLOB    NOT NULL CHECK (length(provider) = 33),
    gateway     BLOB    NOT NULL CHECK (length(gateway) = 33),
    tokens      INTEGER NOT NULL CHECK (tokens >= 0),
    price_nano  INTEGER NOT NULL CHECK (price_nano >= 0),
    burn_rate   REAL    NOT NULL CHECK (burn_rate >= 0 AND burn_rate < 1),
    payment     INTEGER NOT NULL CHECK (payment >= 0),
    burned      INTEGER NOT NULL CHECK (burned >= 0),
    earned      INTEGER NOT NULL CHECK (earned >= 0),
    receipt     BLOB    NOT NULL,
    settled_at  REAL    NOT NULL,
    CHECK (payment = burned + earned),
    UNIQUE (role, gateway, request_id)
) STRICT;
-- Covering index: the 60 s rate-window sum reads the index only.
CREATE INDEX IF NOT EXISTS settlements_by_provider_time ON settlements (provider, settled_at, tokens);

-- Running totals per role, updated in the settlement's own transaction (O(1) reads for the API).
CREATE TABLE IF NOT EXISTS totals (
    role        TEXT    PRIMARY KEY CHECK (role IN ('gateway', 'provider')),
    settlements INTEGER NOT NULL DEFAULT 0,
    tokens      INTEGER NOT NULL DEFAULT 0,
    paid        INTEGER NOT NULL DEFAULT 0,
    burned      INTEGER NOT NULL DEFAULT 0,
    earned      INTEGER NOT NULL DEFAULT 0,
    CHECK (paid = burned + earned)
) STRICT;
INSERT OR IGNORE INTO totals (role) VALUES ('gateway'), ('provider');

-- Accounts: what each user has spent, what each provider (hex public key) has earned.
CREATE TABLE IF NOT EXISTS accounts (
    kind        TEXT    NOT NULL CHECK (kind IN ('user', 'provider')),
    name        TEXT    NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    settlements INTEGER NOT NULL,
    tokens      INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) STRICT, WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS refusals (
    reason      TEXT    PRIMARY KEY,
    count       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"""

_ROW_COLUMNS = ("id, receipt_id, request_id, role, user, provider, gateway, tokens, price_nano, "
                "burn_rate, payment, burned, earned, settled_at")


#: SQLite's primary result codes for a file that cannot take a write just now.
_STORAGE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY,
                            sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
                            sqlite3.SQLITE_NOMEM})


def _storage_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for the file's sake (its extended code's low byte is the primary
    code), not for what was written."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _STORAGE_CODES


@dataclass(frozen=True)
class LedgerTotals:
    """Sums over settlements (nano-NEURO, tokens). paid == burned + earned always."""

    settlements: int = 0
    tokens: int = 0
    paid: int = 0
    burned: int = 0
    earned: int = 0

    def __add__(self, other: "LedgerTotals") -> "LedgerTotals":
        return LedgerTotals(*(a + b for a, b in zip(_astuple(self), _astuple(other))))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        for key in ("paid", "burned", "earned"):
            out[f"{key}_neuro"] = from_nano(getattr(self, key))
        return out


def _astuple(t: LedgerTotals) -> tuple[int, int, int, int, int]:
    return (t.settlements, t.tokens, t.paid, t.burned, t.earned)


@dataclass(frozen=True)
class SettlementRecord:
    """One settled receipt as stored."""

    id: int
    receipt_id: bytes
    request_id: str
    role: str
    user: str
    provider: bytes
    gateway: bytes
    tokens: int
    price_nano: int
    burn_rate: float
    payment: int
    burned: int
    earned: int
    settled_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ids in hex, nodes as libp2p peer ids."""
        out: dict[str, Any] = asdict(self)
        out["receipt_id"] = self.receipt_id.hex()
        out["provider"] = peer_id_of(self.provider)
        out["gateway"] = peer_id_of(self.gateway)
        return out


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `Ledger.verify()`. `problems` is empty iff `ok`."""

    ok: bool
    rows: int
    totals: LedgerTotals
    problems: tuple[str, ...]
    more_problems: int = 0     # problems found beyond those listed

    def __str__(self) -> str:
        t = self.totals
        head = (f"{self.rows} settlements, {t.tokens} tokens: paid {t.paid} nano = "
                f"earned {t.earned} + burned {t.burned}")
        if self.ok:
            return f"ledger OK: {head}; every row's receipt verifies and recomputes"
        lines = [f"ledger FAILED ({len(self.problems) + self.more_problems} problems): {head}"]
        lines += [f"  - {p}" for p in self.problems]
        if self.more_problems:
            lines.append(f"  … and {self.more_problems} more")
        return "\n".join(lines)


class _SeenReceipts:
    """`receipt_id in seen`, answered by the settlements table inside the open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __contains__(self, receipt_id: object) -> bool:
        row = self._conn.execute("SELECT 1 FROM settlements WHERE receipt_id = ?",
                                 (receipt_id,)).fetchone()
        return row is not None


class Ledger:
    """Settlements in a SQLite file. Thread-safe (one connection behind a lock); every call
    blocks on disk, so trio code uses `AsyncLedger`, which runs them in a worker thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> "Ledger":
        """Open (creating if needed) the ledger file at `path` in WAL mode."""
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per settlement.
        conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise LedgerError(MALFORMED, f"{file}: could not switch the journal to WAL ({mode})")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise LedgerError(MALFORMED, f"{file}: ledger schema version {version}, this "
                                             f"program knows {SCHEMA_VERSION}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                # Statements one by one: executescript() would COMMIT the transaction we opened.
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # A file of this version has its tables: on a full disk it still opens, for
                # reading (`neuroshard-node ledger`), and each write says why it cannot.
                if version != SCHEMA_VERSION or not _storage_failure(exc):
                    raise
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise LedgerError(MALFORMED, f"{file} is not a usable ledger: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, file)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def settle(self, receipt: Receipt | bytes, role: str, now: float, burn_rate: float) -> Settlement:
        """Record a receipt that was already accepted (a provider's own receipt, or one checked by
        the caller). The stored bytes are re-decoded, so only a correctly signed receipt settles.

        Raises LedgerError: `replay` if it (or another receipt for the same request) already
        settled, `malformed`/`bad_signature` for bytes that do not verify, `implausible` beyond
        the per-settlement ceiling. Refusals are counted."""
        try:
            if role not in ROLES:
                raise ValueError(f"role must be one of {ROLES}, got {role!r}")
            checked = _verified_receipt(receipt)
            amounts = amounts_of(checked, burn_rate)
            with self._lock, self._storage(), self._write():
                self._insert(checked, role, now, burn_rate, amounts)
            return amounts
        except LedgerError as exc:
            if exc.reason != STORAGE:
                self.record_refusal(exc.reason)
            raise

    def accept(self, data: bytes, job: MatchedJob, *, capacity_tokens_per_s: int, now: float,
               config: MarketConfig, role: str = "gateway") -> Settlement:
        """Check receipt bytes against the matched job (checks.check_receipt, with this ledger's
        settled ids and the provider's tokens in the last 60 s) and settle them at the locked
        price, all in one transaction so two receipts cannot both squeeze under the rate limit.

        Raises LedgerError with the reason, after counting it."""
        try:
            if role not in ROLES:
                raise ValueError(f"role must be one of {ROLES}, got {role!r}")
            with self._lock, self._storage(), self._write():
                recent = self._recent_tokens(job.provider, now)
                receipt = check_receipt(data, job, capacity_tokens_per_s=capacity_tokens_per_s,
                                        now=now, recent_provider_tokens=recent, config=config,
                                        seen=_SeenReceipts(self._conn))
                amounts = amounts_of(receipt, config.burn_rate)
                self._insert(receipt, role, now, config.burn_rate, amounts)
            return amounts
        except LedgerError as exc:
            if exc.reason != STORAGE:
                self.record_refusal(exc.reason)
            raise

    def record_refusal(self, reason: str) -> None:
        """Count a refused receipt under `reason` (in its own transaction: the refused
        settlement's was rolled back)."""
        with self._lock, self._write():
            self._conn.execute(
                "INSERT INTO refusals (reason, count) VALUES (?, 1) "
                "ON CONFLICT (reason) DO UPDATE SET count = count + 1", (reason,))

    def _insert(self, receipt: Receipt, role: str, now: float, burn_rate: float,
                amounts: Settlement) -> None:
        conn = self._conn
        try:
            conn.execute(
                "INSERT INTO settlements (receipt_id, request_id, role, user, provider, gateway, "
                "tokens, price_nano, burn_rate, payment, burned, earned, receipt, settled_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (receipt.msg_id, receipt.request_id, role, receipt.user, receipt.signer,
                 receipt.gateway, receipt.tokens_served, receipt.locked_price_nano,
                 float(burn_rate), amounts.payment, amounts.burned, amounts.earned, receipt.wire,
                 float(now)))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise LedgerError(REPLAY, f"receipt for request {receipt.request_id!r} has already "
                                          f"settled ({exc})") from None
            raise
        try:
            for kind, name, amount in (("user", receipt.user, amounts.payment),
                                       ("provider", receipt.signer.hex(), amounts.earned)):
                conn.execute(
                    "INSERT INTO accounts (kind, name, amount, settlements, tokens) "
                    "VALUES (?, ?, ?, 1, ?) ON CONFLICT (kind, name) DO UPDATE SET "
                    "amount = amount + excluded.amount, settlements = settlements + 1, "
                    "tokens = tokens + excluded.tokens",
                    (kind, name, amount, receipt.tokens_served))
            conn.execute(
                "UPDATE totals SET settlements = settlements + 1, tokens = tokens + ?, "
                "paid = paid + ?, burned = burned + ?, earned = earned + ? WHERE role = ?",
                (receipt.tokens_served, amounts.payment, amounts.burned, amounts.earned, role))
        except (sqlite3.IntegrityError, sqlite3.OperationalError) as exc:
            if _storage_failure(exc):
                raise  # not the sums: `_storage` says so
            # A 64-bit sum overflowing (SQLite turns it into a REAL the STRICT columns refuse):
            # refuse the settlement, never wrap or round.
            raise LedgerError(OVERFLOW, f"ledger totals would overflow: {exc}") from None

    @contextmanager
    def _storage(self) -> Iterator[None]:
        """A write the file cannot take (disk full, I/O error, read-only, locked past the
        timeout) is LedgerError `storage`: this node's trouble, not the receipt's."""
        try:
            yield
        except sqlite3.Error as exc:
            if not _storage_failure(exc):
                raise
            raise LedgerError(STORAGE, f"cannot write {self.path}: {exc}") from None

    class _Transaction:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def __enter__(self) -> None:
            # IMMEDIATE takes the write lock now, so checks and insert see the same state.
            self._conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, *rest: object) -> None:
            if exc_type is None:
                try:
                    self._conn.execute("COMMIT")
                    return
                except BaseException:
                    # A failed COMMIT (disk full, I/O error) may leave the transaction open: roll
                    # it back so the connection stays usable, then report the failure.
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _write(self) -> "Ledger._Transaction":
        return Ledger._Transaction(self._conn)

    # -- reading ---------------------------------------------------------------------------------

    def totals(self, role: str | None = None) -> LedgerTotals:
        """Totals over all settlements, or over one role's."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT settlements, tokens, paid, burned, earned FROM totals "
                "WHERE ? IS NULL OR role = ?", (role, role)).fetchall()
        return sum((LedgerTotals(*r) for r in rows), LedgerTotals())

    def recent(self, limit: int = 20) -> list[SettlementRecord]:
        """The last `limit` settlements, newest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM settlements "
                                      "ORDER BY id DESC LIMIT ?", (max(0, limit),)).fetchall()
        return [SettlementRecord(*r) for r in rows]

    def earnings(self, provider: bytes) -> int:
        """nano-NEURO earned by the provider with this public key."""
        return self._account("provider", provider.hex())

    def spent(self, user: str) -> int:
        """nano-NEURO paid by this user."""
        return self._account("user", user)

    def _account(self, kind: str, name: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT amount FROM accounts WHERE kind = ? AND name = ?",
                                     (kind, name)).fetchone()
        return int(row[0]) if row else 0

    def recent_tokens(self, provider: bytes, now: float) -> int:
        """Tokens settled for `provider` in the rate window (last 60 s) before `now`."""
        with self._lock:
            return self._recent_tokens(provider, now)

    def _recent_tokens(self, provider: bytes, now: float) -> int:
        # No upper bound: if the clock stepped back, rows "from the future" still count, so a
        # clock step never opens extra headroom.
        row = self._conn.execute(
            "SELECT COALESCE(SUM(tokens), 0) FROM settlements "
            "WHERE provider = ? AND settled_at > ?",
            (provider, now - RATE_WINDOW_S)).fetchone()
        return int(row[0])

    def refusals(self) -> dict[str, int]:
        """Refused receipts per reason (every known reason present, zero if none)."""
        with self._lock:
            rows = self._conn.execute("SELECT reason, count FROM refusals").fetchall()
        counts = {reason: 0 for reason in REASONS}
        counts.update({reason: int(count) for reason, count in rows})
        return counts

    def has_settled(self, receipt_id: bytes) -> bool:
        with self._lock:
            return receipt_id in _SeenReceipts(self._conn)

    def summary(self, recent_limit: int = 10, provider: bytes | None = None) -> dict[str, Any]:
        """Everything `GET /api/ledger` and `neuroshard-node ledger` show, JSON-ready.
        With `provider` (this node's public key), includes what it has earned."""
        out: dict[str, Any] = {
            "path": str(self.path),
            "totals": self.totals().to_dict(),
            "by_role": {role: self.totals(role).to_dict() for role in ROLES},
            "refusals": self.refusals(),
            "recent": [r.to_dict() for r in self.recent(recent_limit)],
        }
        if provider is not None:
            earned = self.earnings(provider)
            out["earnings"] = {"provider": peer_id_of(provider), "earned": earned,
                               "earned_neuro": from_nano(earned)}
        return out

    # -- verification ---------------------------------------------------------------------------

    def verify(self, max_listed: int = 50) -> VerifyReport:
        """Check the invariant and trace every row to its receipt, on a snapshot read through a
        separate connection (WAL readers do not block settlements). Lists the first `max_listed`
        problems (at least one) and counts the rest."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        try:
            conn.execute("BEGIN")  # one snapshot for rows, totals and accounts
            return _verify(conn, max_listed)
        except sqlite3.DatabaseError as exc:
            return VerifyReport(ok=False, rows=0, totals=LedgerTotals(),
                                problems=(f"database error: {exc}",))
        finally:
            conn.close()


def _verify(conn: sqlite3.Connection, max_listed: int) -> VerifyReport:
    problems: list[str] = []
    unlisted = 0

    def problem(text: str) -> None:
        # Keep the first few (at least one, so `problems` is empty iff ok); count the rest, so
        # a badly damaged file does not fill memory with messages.
        nonlocal unlisted
        if len(problems) < max(1, max_listed):
            problems.append(text)
        else:
            unlisted += 1

    check = conn.execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        problem("sqlite quick_check: " + "; ".join(str(r[0]) for r in check[:5]))

    by_role = {role: [0, 0, 0, 0, 0] for role in ROLES}
    spent: dict[str, list[int]] = {}
    earned_by: dict[str, list[int]] = {}
    rows = 0
    for row in _rows(conn):
        rows += 1
        (row_id, receipt_id, request_id, role, user, provider, gateway, tokens, price_nano,
         burn_rate, payment, burned, earned, receipt_bytes) = row
        where = f"settlement #{row_id} (request {request_id!r})"
        if payment != burned + earned:
            problem(f"{where}: payment {payment} != earned {earned} + burned {burned}")
        try:
            receipt = wire.decode_unchecked_time(receipt_bytes)
        except WireError as exc:
            problem(f"{where}: stored receipt does not verify ({exc.reason}): {exc}")
            receipt = None
        if receipt is not None and not isinstance(receipt, Receipt):
            problem(f"{where}: stored bytes are a {type(receipt).__name__}, not a receipt")
            receipt = None
        if receipt is not None:
            stored = (receipt_id, request_id, user, provider, gateway, tokens, price_nano)
            signed = (receipt.msg_id, receipt.request_id, receipt.user, receipt.signer,
                      receipt.gateway, receipt.tokens_served, receipt.locked_price_nano)
            names = ("receipt id", "request id", "user", "provider", "gateway", "tokens",
                     "price")
            for name, have, want in zip(names, stored, signed):
                if have != want:
                    problem(f"{where}: stored {name} {_show(have)} differs from the signed "
                            f"receipt's {_show(want)}")
        if isinstance(tokens, int) and isinstance(price_nano, int) and tokens >= 0 \
                and price_nano >= 0 and 0 <= burn_rate < 1:
            expect = settle_amounts(tokens, price_nano, burn_rate)
            if (payment, burned, earned) != (expect.payment, expect.burned, expect.earned):
                problem(f"{where}: amounts paid/burned/earned {payment}/{burned}/{earned}, "
                        f"recomputed {expect.payment}/{expect.burned}/{expect.earned}")
        else:
            problem(f"{where}: invalid tokens/price/burn rate {tokens}/{price_nano}/{burn_rate}")
        if role not in by_role:
            problem(f"{where}: unknown role {role!r}")
        else:
            acc = by_role[role]
            for i, value in enumerate((1, tokens, payment, burned, earned)):
                acc[i] += value
        for book, name, amount in ((spent, user, payment), (earned_by, provider.hex(), earned)):
            entry = book.setdefault(name, [0, 0, 0])
            entry[0] += amount
            entry[1] += 1
            entry[2] += tokens

    total = LedgerTotals()
    for role, acc in by_role.items():
        recomputed = LedgerTotals(*acc)
        total = total + recomputed
        stored_row = conn.execute("SELECT settlements, tokens, paid, burned, earned FROM totals "
                                  "WHERE role = ?", (role,)).fetchone()
        stored_totals = LedgerTotals(*stored_row) if stored_row else None
        if stored_totals != recomputed:
            problem(f"totals for role {role}: stored {stored_totals}, recomputed from rows "
                    f"{recomputed}")
    if total.paid != total.earned + total.burned:
        problem(f"Σ paid {total.paid} != Σ earned {total.earned} + Σ burned {total.burned}")

    for kind, book in (("user", spent), ("provider", earned_by)):
        stored_accounts = {name: [amount, n, t] for name, amount, n, t in conn.execute(
            "SELECT name, amount, settlements, tokens FROM accounts WHERE kind = ?", (kind,))}
        for name in sorted(set(stored_accounts) | set(book)):
            have, want = stored_accounts.get(name), book.get(name)
            if have != want:
                problem(f"{kind} account {name[:24]!r}: stored [amount, settlements, tokens] "
                        f"{have}, recomputed from rows {want}")
    conn.execute("COMMIT")
    return VerifyReport(ok=not problems, rows=rows, totals=total, problems=tuple(problems),
                        more_problems=unlisted)


def _rows(conn: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    yield from conn.execute(
        "SELECT id, receipt_id, request_id, role, user, provider, gateway, tokens, price_nano, "
        "burn_rate, payment, burned, earned, receipt FROM settlements ORDER BY id")


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()[:16] + "…"
    return repr(value)


def _statements(script: str) -> list[str]:
    """Split the schema into statements (sqlite3.complete_statement knows where one ends)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


def _verified_receipt(receipt: Receipt | bytes) -> Receipt:
    """The receipt the bytes say, whatever object the caller handed in: the ledger stores the
    bytes, so it settles on what the bytes verify to."""
    data = receipt.wire if isinstance(receipt, Receipt) else receipt
    if not data:
        raise LedgerError(MALFORMED, "receipt has no signed wire bytes (sign it first)")
    return decode_receipt(data, None)


# -- hooks for the CLI (`neuroshard-node ledger`, `neuroshard-node ledger verify`) ---------------

def ledger_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where a node keeps its ledger: `<data-dir>/ledger.sqlite3`."""
    return Path(data_dir).expanduser() / LEDGER_FILE


def ledger_summary(data_dir: str | os.PathLike[str], recent_limit: int = 10,
                   provider: bytes | None = None) -> dict[str, Any]:
    """Totals, per-role totals, refusal counts and recent settlements of the node at `data_dir`.
    A data dir without a ledger yet reports zeros (and does not create one)."""
    path = ledger_path(data_dir)
    if not path.exists():
        return {"path": str(path), "exists": False, "totals": LedgerTotals().to_dict(),
                "by_role": {role: LedgerTotals().to_dict() for role in ROLES},
                "refusals": {reason: 0 for reason in REASONS}, "recent": []}
    with Ledger.open(path) as ledger:
        return {"exists": True, **ledger.summary(recent_limit, provider)}


def ledger_verify(data_dir: str | os.PathLike[str]) -> tuple[bool, str]:
    """Run `Ledger.verify()` on the node's ledger: (ok, a report for people)."""
    path = ledger_path(data_dir)
    if not path.exists():
        return True, f"no ledger at {path} yet: nothing settled, nothing to verify"
    try:
        ledger = Ledger.open(path)
    except LedgerError as exc:
        return False, f"ledger FAILED: {exc}"
    with ledger:
        report = ledger.verify()
    return report.ok, f"{path}: {report}"


__all__ = [
    "Ledger", "LedgerTotals", "SettlementRecord", "VerifyReport", "LEDGER_FILE", "ROLES",
    "ledger_path", "ledger_summary", "ledger_verify",
]
