// One document's passages in reading order (GET /api/documents/{id}); `?chunk=ID` marks and scrolls to the
// passage a citation or a search hit pointed at.

import { call } from "./api.js";
import { el, fill, whereOf } from "./dom.js";
import { boot, showError } from "./page.js";
import { richText } from "./table.js";

const $ = (id) => document.getElementById(id);

async function start() {
  await boot();
  const params = new URLSearchParams(window.location.search);
  const target = params.get("chunk");
  try {
    const doc = await call(`/api/documents/${encodeURIComponent(params.get("id") ?? "")}`);
    document.title = `${doc.title} — RAG appliance`;
    fill($("doc-title"), doc.title || doc.source);
    fill($("doc-meta"), `${doc.source} · collection ${doc.collection} · ${doc.passages.length} passage`
      + (doc.passages.length === 1 ? "" : "s"));
    fill($("passages"), ...doc.passages.map((p) => {
      const where = whereOf({ ...p, title: doc.title });
      const isTarget = String(p.chunk_id) === target;
      return el("section", { id: `chunk-${p.chunk_id}`, class: `doc-passage${isTarget ? " target" : ""}`,
        tabindex: isTarget ? "-1" : null, "aria-label": isTarget ? "The cited passage" : null },
        where && el("p", { class: "meta" }, where), richText(el("div", { class: "passage-text" }), p.text));
    }));
    const chosen = target && $(`chunk-${target}`);
    if (chosen) {
      chosen.scrollIntoView({ block: "center" });
      chosen.focus({ preventScroll: true });
    }
  } catch (err) {
    showError($("notice"), err);
  }
}

start();
