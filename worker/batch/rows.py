"""Reading a batch file (CSV or JSON lines) row by row; each bad row is a `RowError`."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED_COLUMNS = ("idempotency_key", "provider", "account", "amount", "currency", "destination")
OPTIONAL_COLUMNS = ("fields", "deadline_hours", "paid_amount")
FIELD_PREFIX = "fields."  # CSV: one column per provider field, e.g. `fields.order_id`


class BatchFileError(ValueError):
    """The file as a whole cannot be read (encoding, columns, empty, not CSV/JSON lines)."""


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based data row (CSV: the header is not a row; JSON lines: the line number)
    field: str
    rule: str
    key: str | None = None

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.rule}"


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    with path.open("rb") as f:
        head = f.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


def _text(path: Path) -> io.TextIOWrapper:
    # utf-8-sig: a BOM (Excel's CSV export) is skipped; any invalid byte raises UnicodeDecodeError.
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8-sig", errors="strict", newline="")


def _cell(value: str) -> Any:
    """A CSV provider-field cell: JSON numbers without a fraction, booleans and null become values."""
    text = value.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return value
    return parsed if isinstance(parsed, bool | int) or parsed is None else value


def _check_columns(header: Sequence[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise BatchFileError(f"missing column(s): {', '.join(missing)} (required: {', '.join(REQUIRED_COLUMNS)})")
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS and not c.startswith(FIELD_PREFIX)]
    if unknown:
        raise BatchFileError(
            f"unknown column(s): {', '.join(unknown)} (provider fields go in a `fields` JSON column "
            f"or in `{FIELD_PREFIX}<name>` columns)"
        )
    seen: set[str] = set()
    dupes = [c for c in header if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
    if dupes:
        raise BatchFileError(f"column(s) named twice: {', '.join(dupes)}")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with _text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        _check_columns(header)
        for n, cells in enumerate(reader, start=1):
            if not "".join(cells).strip():
                continue  # a blank line (every cell empty or whitespace)
            if len(cells) != len(header):
                yield n, RowError(n, "row", f"has {len(cells)} cells, the header has {len(header)}")
                continue
            data: dict[str, Any] = {}
            fields: dict[str, Any] = {}
            error: RowError | None = None
            for name, value in zip(header, cells, strict=True):
                if name.startswith(FIELD_PREFIX):
                    if value.strip():
                        fields[name.removeprefix(FIELD_PREFIX)] = _cell(value)
                elif name == "fields":
                    if value.strip():
                        try:
                            parsed = json.loads(value)
                        except ValueError:
                            error = RowError(n, "fields", "must be a JSON object")
                            break
                        if not isinstance(parsed, dict):
                            error = RowError(n, "fields", "must be a JSON object")
                            break
                        fields.update(parsed)
                elif name in ("deadline_hours", "paid_amount"):
                    if value.strip():
                        data[name] = value.strip()
                else:
                    data[name] = value
            if error is not None:
                yield n, error
                continue
            data["fields"] = fields
            yield n, data


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    with _text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, RowError(n, "row", f"is not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(data, dict):
                yield n, RowError(n, "row", "must be a JSON object")
                continue
            missing = [c for c in REQUIRED_COLUMNS if c not in data]
            if missing:
                # Per row in JSON lines (each line names its own keys), but said like a column.
                yield n, RowError(n, missing[0], "is required (missing column)")
                continue
            yield n, data


def read_rows(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """(row number, raw row or a row-level error), streamed. BatchFileError for file-level problems."""
    fmt = fmt or detect_format(path)
    rows = _csv_rows(path) if fmt == "csv" else _jsonl_rows(path)
    try:
        yield from rows
    except UnicodeDecodeError as exc:
        raise BatchFileError(
            f"{path.name} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} near byte offset "
            f"{exc.start} of a read block); save it as UTF-8 and submit again"
        ) from None
    except csv.Error as exc:
        raise BatchFileError(f"{path.name}: not a readable CSV file: {exc}") from None
