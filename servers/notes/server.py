"""The `notes` MCP server: a personal, persistent notes store.

Whose notes a process serves is decided by a credential token (the hub starts
one process per distinct token). Only the SHA-256 of the token is kept; the
token is never stored, logged or returned. Without a token every tool fails
with a message naming the missing credential.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_hub_servers.notes.store import Note, NotesStore, owner_id

MISSING_CREDENTIAL = (
    "The `notes` connection credential (field `token`) is missing. Add a credential for the "
    "`notes` server with a `token` field, then try again."
)
_READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
_ADD = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
_DELETE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)

NoteId = Annotated[int, Field(ge=1, description="The note's id, as returned by add_note, list_notes or search_notes.")]
MAX_TAGS = 20


class NoteOut(BaseModel):
    """A note with its full text."""

    id: int
    title: str
    body: str
    tags: list[str]
    created_at: str
    updated_at: str


class NoteSummary(BaseModel):
    """A note without its full text."""

    id: int
    title: str
    tags: list[str]
    preview: str = Field(description="the first 200 characters of the body")
    created_at: str


class NoteList(BaseModel):
    """A page of notes, newest first."""

    notes: list[NoteSummary]
    total: int = Field(description="number of notes matching, across all pages")


class SearchHits(BaseModel):
    """Notes matching a search, newest first."""

    notes: list[NoteSummary]


class Deleted(BaseModel):
    """Outcome of a delete."""

    id: int
    deleted: bool = Field(description="false if there was no note with this id (already deleted)")


def _full(note: Note) -> NoteOut:
    return NoteOut(**vars(note))


def _summary(note: Note) -> NoteSummary:
    preview = note.body if len(note.body) <= 200 else note.body[:199] + "…"
    return NoteSummary(id=note.id, title=note.title, tags=note.tags, preview=preview, created_at=note.created_at)


def _clean_tags(tags: list[str]) -> list[str]:
    cleaned = sorted({t.strip().lower() for t in tags if t.strip()})
    if len(cleaned) > MAX_TAGS:
        raise ToolError(f"at most {MAX_TAGS} tags per note")
    if any(len(t) > 50 for t in cleaned):
        raise ToolError("tags are at most 50 characters")
    return cleaned


def build_server(*, token: str | None, db_path: str | Path) -> MCPServer:
    """Build the notes server.

    Args:
        token: the caller's credential token; None or blank makes every tool report
            the missing credential.
        db_path: SQLite file holding everyone's notes (created on first use).
    """
    store = NotesStore(db_path, owner_id(token)) if token and token.strip() else None
    del token  # only the digest inside the store is kept

    def notes() -> NotesStore:
        if store is None:
            raise ToolError(MISSING_CREDENTIAL)
        return store

    server = MCPServer(
        "notes",
        version="1.0.0",
        instructions="The user's personal notes. Notes persist between conversations; ids are per user.",
    )

    @server.tool(annotations=_ADD)
    def add_note(
        title: Annotated[str, Field(min_length=1, max_length=200, description="Short title.")],
        body: Annotated[str, Field(max_length=100_000, description="The note's text (Markdown is fine).")] = "",
        tags: Annotated[
            list[str] | None, Field(description="Labels for filtering, e.g. ['work', 'ideas']; stored in lower case.")
        ] = None,
    ) -> NoteOut:
        """Save a new note for the user and return it with its id."""
        store = notes()
        if not title.strip():
            raise ToolError("the title must not be blank")
        return _full(store.add(title.strip(), body, _clean_tags(tags or [])))

    @server.tool(annotations=_READ)
    def list_notes(
        tag: Annotated[str | None, Field(description="Only notes with this tag.")] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 50,
        offset: Annotated[int, Field(ge=0, description="Skip this many notes (for paging).")] = 0,
    ) -> NoteList:
        """List the user's notes, newest first, optionally only those with a tag. Bodies are shortened;
        use get_note for the full text."""
        found, total = notes().listing(tag.strip().lower() if tag else None, limit, offset)
        return NoteList(notes=[_summary(n) for n in found], total=total)

    @server.tool(annotations=_READ)
    def get_note(note_id: NoteId) -> NoteOut:
        """Get one note with its full text."""
        note = notes().get(note_id)
        if note is None:
            raise ToolError(f"There is no note with id {note_id}; list_notes shows the existing ids.")
        return _full(note)

    @server.tool(annotations=_READ)
    def search_notes(
        query: Annotated[str, Field(min_length=1, max_length=500, description="Words that must all appear.")],
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
    ) -> SearchHits:
        """Search the user's notes: returns notes whose title, body or tags contain every word of the
        query (case-insensitive), newest first."""
        words = query.split()
        if not words:
            raise ToolError("the query must contain at least one word")
        return SearchHits(notes=[_summary(n) for n in notes().search(words[:20], limit)])

    @server.tool(annotations=_DELETE)
    def delete_note(note_id: NoteId) -> Deleted:
        """Delete one of the user's notes permanently."""
        return Deleted(id=note_id, deleted=notes().delete(note_id))

    return server
