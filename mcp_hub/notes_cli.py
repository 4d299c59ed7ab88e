"""`mcp-hub notes import-shared`: move one owner's notes from the pre-sandbox shared database.

Before hosted servers ran sandboxed, `hub/notes` kept every owner's notes in one file,
`<data_dir>/notes.sqlite3` (rows keyed by the SHA-256 of the `notes` token). Now each session
(tenant + server + credential) writes `<data_dir>/sandboxes/<digest>/notes.sqlite3`, and the
sandbox hides the data folder, so a session cannot read the old file itself. The session's
folder is derived from the token, which the hub never stores: whoever holds the token runs
this once per token (and tenant) to copy its notes across. The old file is only read;
running it again copies nothing twice (a note already there with the same title, body and
creation time is skipped). Numbers follow the owner's existing ones in the session's file.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

from mcp_hub_servers.notes.store import NotesStore, owner_id

from .credentials import Credential, bind
from .errors import HubError
from .hosting import Hosting
from .resolution import Target
from .sandbox import Sandbox
from .settings import Settings

SLUG = "hub/notes"


def add_parser(commands: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `notes import-shared`."""
    notes = commands.add_parser("notes", help="hub/notes maintenance")
    notes_commands = notes.add_subparsers(dest="notes_command", required=True)
    shared = notes_commands.add_parser("import-shared", help="copy one token's notes from the pre-sandbox shared "
                                       "<data_dir>/notes.sqlite3 into its session's own database")
    common(shared)
    shared.add_argument("--cred", action="append", default=[], metavar="notes:token=VALUE", required=True,
                        help="the notes credential whose notes to copy")
    shared.add_argument("--tenant", default="default", help="the tenant whose session gets them (default: default)")
    shared.add_argument("--from", dest="source", type=Path, help="the old database (default: <data_dir>/notes.sqlite3)")


def run(args: argparse.Namespace, settings: Settings, parse_creds: Callable[[Sequence[str]], list[Credential]]) -> int:
    """Copy the notes; print how many."""
    from .registry import Registry

    source = args.source or settings.data_dir / "notes.sqlite3"
    if not source.is_file():
        raise HubError(f"no shared notes database at {source}", code="invalid_file")
    entry = Registry.from_file(settings.registry).get(SLUG)
    if entry is None:
        raise HubError(f"the registry has no {SLUG}", code="server_not_found")
    credentials = parse_creds(args.cred)
    tokens = [c.values["token"].get_secret_value() for c in credentials if "token" in c.values]
    if len(tokens) != 1:
        raise HubError("give exactly one token: --cred notes:token=VALUE", code="invalid_request")
    version = entry.versions[entry.latest]
    target = Target(name=SLUG, ident=SLUG, version=version, entry=entry)
    hosting = Hosting(data_dir=settings.data_dir, registry_root=settings.registry.parent)
    folder = hosting.session_dir(target, args.tenant, bind(entry, SLUG, credentials))
    database = Path(hosting.expand(version.env.get("NOTES_DB", "{data_dir}/notes.sqlite3"), folder))
    Sandbox(uid=settings.sandbox_uid).prepare(folder)
    copied = _copy(source, database, owner_id(tokens[0]))
    owner = folder.stat()
    for path in database.parent.glob(database.name + "*"):  # the database and its WAL files: the child's to write
        os.chown(path, owner.st_uid, owner.st_gid)
    print(f"imported {copied} note(s) into {SLUG}'s session folder for tenant {args.tenant!r}")
    return 0


def _copy(source: Path, database: Path, owner: str) -> int:
    """Copy `owner`'s notes (and tags) from `source`, read-only, into `database`; how many were new."""
    NotesStore(database, owner).listing(None, 1, 0)  # creates the schema
    with closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as old, \
            closing(sqlite3.connect(database, timeout=10, isolation_level=None)) as new:
        notes = old.execute("SELECT number, title, body, created_at, updated_at FROM notes WHERE owner = ? "
                            "ORDER BY number", (owner,)).fetchall()
        new.execute("BEGIN IMMEDIATE")
        copied = 0
        for number, title, body, created, updated in notes:
            if new.execute("SELECT 1 FROM notes WHERE owner = ? AND title = ? AND body = ? AND created_at = ?",
                           (owner, title, body, created)).fetchone():
                continue
            new.execute("INSERT INTO owners (owner, last_number) VALUES (?, 1) "
                        "ON CONFLICT(owner) DO UPDATE SET last_number = last_number + 1", (owner,))
            (fresh,) = new.execute("SELECT last_number FROM owners WHERE owner = ?", (owner,)).fetchone()
            new.execute("INSERT INTO notes (owner, number, title, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (owner, fresh, title, body, created, updated))
            tags = old.execute("SELECT tag FROM note_tags WHERE owner = ? AND number = ?", (owner, number)).fetchall()
            new.executemany("INSERT INTO note_tags (owner, number, tag) VALUES (?, ?, ?)",
                            [(owner, fresh, tag) for (tag,) in tags])
            copied += 1
        new.execute("COMMIT")
    return copied
