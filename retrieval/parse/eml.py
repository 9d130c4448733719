"""E-mail (.eml) via the standard library's `email` package (`policy.default`): the title is the Subject;
the text starts with the From, To, Date and Subject headers as "Name: value" lines, then the body: the
text/plain part, else the HTML part's main text (`retrieval.parse.html`). Attachments are not parsed (nor
listed): only the message's own body is indexed. The headers are also the document's `metadata` (keys
"from", "to", "date", "subject")."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

from retrieval.errors import CorruptFileError
from retrieval.parse.html import parse_html
from retrieval.parse.text import stem_title
from retrieval.types import ParsedDocument, Section

HEADERS = ("From", "To", "Date", "Subject")


def _header(message: EmailMessage, key: str) -> str:
    """The header's decoded value on one line; its raw text when it is too malformed to decode."""
    try:
        value = message.get(key)
    except (ValueError, IndexError, TypeError, AttributeError):
        value = next((raw for field, raw in message.raw_items() if field.lower() == key.lower()), None)
    return " ".join(str(value).split()) if value is not None else ""


def _body(message: EmailMessage, name: str) -> list[Section]:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return []
    try:
        content = part.get_content()
    except (LookupError, ValueError, TypeError) as exc:  # unknown charset, bad transfer encoding
        raise CorruptFileError(f"{name}: the message body cannot be decoded ({exc})") from exc
    if not isinstance(content, str) or not content.strip():
        return []
    if part.get_content_subtype() == "html":
        try:
            return parse_html(content.encode("utf-8"), name).sections
        except CorruptFileError:
            return []
    text = content.replace("\r\n", "\n").replace("\r", "\n").strip()
    return [Section(text=text)]


def parse_eml(data: bytes, name: str) -> ParsedDocument:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)  # policy.default builds EmailMessage objects
    metadata = {key.lower(): value for key in HEADERS if (value := _header(message, key))}
    body = _body(message, name)
    if not metadata and not body:
        raise CorruptFileError(f"{name}: not an e-mail message (no headers, no text body)")
    head = "\n".join(f"{key}: {metadata[key.lower()]}" for key in HEADERS if key.lower() in metadata)
    if body:
        first = body[0]
        sections = [Section(text=f"{head}\n\n{first.text}".strip(), heading_path=first.heading_path), *body[1:]]
    else:
        sections = [Section(text=head)]
    return ParsedDocument(
        title=metadata.get("subject") or stem_title(name), sections=sections, kind="eml", metadata=metadata
    )
