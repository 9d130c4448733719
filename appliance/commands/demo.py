"""`appliance demo` (and `make demo`): a first collection to ask, from pages the OS already ships.

Ingests a fixed selection of Python library pages from Debian's `python3.11-doc` into a `demo` collection,
pre-encodes their chunk KV (the document cache's disk tier) and prints where to ask and what.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from appliance.commands.errors import exit_on_appliance_error
from appliance.config import Settings
from appliance.errors import ApplianceError

console = Console()

CORPUS = Path("/usr/share/doc/python3.11/html/library")
# Short and mid-sized pages of everyday modules: ~380 chunks, so ingest and warm take a few minutes on 2 cores.
PAGES = (
    "json", "csv", "random", "uuid", "base64", "tempfile", "textwrap", "timeit", "getpass", "copy", "pprint",
    "bisect", "heapq", "glob", "secrets", "queue", "gzip", "fractions", "graphlib", "contextvars", "filecmp",
    "abc", "hmac", "fileinput", "sched", "shelve", "array", "zlib", "fnmatch", "shutil",
)
QUESTIONS = (
    "How do I insert an item into a sorted list and keep it sorted?",
    "Which function returns the n largest elements of a dataset?",
)


def demo_pages(corpus: Path) -> list[Path]:
    """The selection's pages present under `corpus`. Raises ApplianceError when none is."""
    pages = [corpus / f"{name}.html" for name in PAGES if (corpus / f"{name}.html").is_file()]
    if not pages:
        raise ApplianceError(f"no demo pages under {corpus}: install Debian's python3.11-doc "
                             "(apt-get install python3.11-doc, or `make demo`)")
    return pages


def demo(
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to fill")] = "demo",
    corpus: Annotated[Path, typer.Option(help="Folder of python3.11-doc's library pages")] = CORPUS,
    warm: Annotated[bool, typer.Option(help="Pre-encode the chunks' KV (the document cache)")] = True,
    data_dir: Annotated[Path | None, typer.Option(envvar="APPLIANCE_DATA_DIR", help="Data dir [default: ./data]")]
    = None,
) -> None:
    """Load ~30 Python library pages into a `demo` collection, ready to ask in the web UI."""
    from appliance.commands.retrieval import ingest_with_progress
    from appliance.commands.service import open_service
    from appliance.commands.warm import report_warm, warm_collection

    settings = Settings.with_flags(data_dir=data_dir)
    with exit_on_appliance_error():
        pages = demo_pages(corpus)
        service = open_service(data_dir, None, None, 256)
        try:
            status = ingest_with_progress(service, collection, pages)
            if status.state != "done":
                raise ApplianceError(f"ingestion ended {status.state}")
            if warm:
                report_warm(collection, warm_collection(settings, service, collection), settings)
        finally:
            service.close()
    url = f"http://{settings.host}:{settings.port}/"
    console.print(f"\n[bold green]Ready.[/] Start the server (`make run`), open {url}, choose the collection "
                  f"[bold]{collection}[/] and ask, for example:")
    for question in QUESTIONS:
        console.print(f"  • {question}")
