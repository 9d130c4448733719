// The search page: ranked passages of one collection (POST /api/search) with the query's words highlighted,
// their document, page or heading, and fused score; the collection and the mode (hybrid, vector, BM25) are
// filters.

import { call } from "./api.js";
import { contentWords, docLink, el, fill, formatMs, termRanges, whereOf } from "./dom.js";
import { mountFilterControls, readFilters } from "./filters.js";
import { boot, fillCollectionSelect, readableCollections, showError } from "./page.js";
import { richText } from "./table.js";

const $ = (id) => document.getElementById(id);

function hitNode(hit, rank, terms) {
  const where = whereOf(hit);
  return el("li", { class: "hit card", value: rank },
    el("h2", { class: "hit-title" }, el("a", { href: docLink(hit.doc_id, hit.chunk_id) }, hit.title || hit.source)),
    el("p", { class: "meta" }, [hit.source, where, `score ${hit.score.toFixed(4)}`].filter(Boolean).join(" · ")),
    richText(el("div", { class: "hit-text" }), hit.text, termRanges(hit.text, terms)));  // tables as tables
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  $("notice").hidden = true;
  fill($("summary"), "Searching…");
  try {
    const body = await call("/api/search", { method: "POST", json: {
      query, collection: $("collection").value, mode: $("mode").value, k: Number($("k").value) || 10,
      filters: readFilters() } });
    const terms = contentWords(query);
    fill($("results"), ...body.hits.map((hit, i) => hitNode(hit, i + 1, terms)));
    fill($("summary"), body.hits.length
      ? `${body.hits.length} passage${body.hits.length === 1 ? "" : "s"} in ${formatMs(body.took_ms)}`
      : "No passage matches. Try other words, or another mode.");
  } catch (err) {
    fill($("summary"));
    fill($("results"));
    showError($("notice"), err);
  }
}

async function start() {
  mountFilterControls($("filter-controls"));
  await boot();
  try {
    const collections = fillCollectionSelect($("collection"), await readableCollections());
    if (!collections.length) {
      fill($("notice"), el("span", { role: "alert" }, "There is no collection to search yet."));
      $("notice").hidden = false;
    }
  } catch (err) {
    showError($("notice"), err);
  }
  $("search-form").addEventListener("submit", search);
  $("query").focus();
}

start();
