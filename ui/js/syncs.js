// The admin page's "Synced folders" table: each folder `appliance sync` keeps a collection equal to, and its
// last pass (GET /api/admin/syncs). Text only, through dom.js (folder names and errors are not trusted HTML).

import { call } from "./api.js";
import { el, fill, formatDate } from "./dom.js";

function stateOf(s) {
  if (s.state === "done" && s.watching) return "watching";
  return s.state;
}

function countsOf(s) {
  const parts = [`${s.added} added`, `${s.changed} changed`, `${s.removed} removed`, `${s.renamed} renamed`,
    `${s.failed} failed`];
  if (s.unsupported) parts.push(`${s.unsupported} unsupported`);
  return parts.join(", ");
}

/** Fill `table` (its body) with the synced folders; `status` says when there are none. */
export async function refreshSyncs(table, status) {
  const { syncs } = await call("/api/admin/syncs");
  fill(table.tBodies[0], ...syncs.map((s) => el("tr", { "data-collection": s.collection },
    el("th", { scope: "row" }, s.collection), el("td", {}, s.folder), el("td", {}, stateOf(s)),
    el("td", {}, formatDate(s.finished_at ?? s.started_at)), el("td", {}, countsOf(s)),
    el("td", {}, s.error || ""))));
  table.closest(".table-wrap").hidden = !syncs.length;
  fill(status, syncs.length ? "" : "No synced folders: run appliance sync DIR --collection NAME.");
  status.hidden = false;
}
