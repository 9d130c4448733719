// The admin page (admin keys only): collections (list, create, delete), uploads by drag-and-drop or file choice
// with a progress card per job, the documents of a collection (size, chunks, date, delete), the API keys
// that exist (never their secrets), and the synced folders (syncs.js). A reader key gets a message and none
// of the controls.

import { call } from "./api.js";
import { docLink, el, fill, formatBytes, formatDate } from "./dom.js";
import { boot, fillCollectionSelect, showError } from "./page.js";
import { refreshSyncs } from "./syncs.js";
import { uploadJob } from "./upload.js";

const $ = (id) => document.getElementById(id);
const path = (name) => `/api/admin/collections/${encodeURIComponent(name)}`;

/** Fill a table's body with rows; the table is hidden while it has none. */
function fillTable(table, rows) {
  fill(table.tBodies[0], ...rows);
  table.closest(".table-wrap").hidden = !rows.length;
}

function row(...cells) {
  return el("tr", {}, ...cells.map((c, i) => (i === 0 ? el("th", { scope: "row" }, c) : el("td", {}, c))));
}

function say(node, text) {
  fill(node, text);
  node.hidden = false;
}

async function guarded(node, action) {
  try {
    await action();
  } catch (err) {
    showError(node, err);
  }
}

async function refreshCollections() {
  const { collections } = await call("/api/admin/collections");
  fillTable($("collections-table"), collections.map((c) => row(c.name, String(c.documents),
    String(c.chunks), formatDate(c.created_at),
    el("span", { class: "row-actions" },
      el("button", { type: "button", onclick: () => selectCollection(c.name) }, "Documents",
        el("span", { class: "visually-hidden" }, ` of ${c.name}`)),
      el("button", { type: "button", class: "danger", onclick: () => deleteCollection(c) }, "Delete",
        el("span", { class: "visually-hidden" }, ` ${c.name}`))))));
  say($("collections-status"), collections.length ? "" : "No collections yet: create one above.");
  fillCollectionSelect($("admin-collection"), collections, "appliance.admin-collection");
  $("file-input").disabled = !collections.length;
  $("dropzone").classList.toggle("disabled", !collections.length);
  await refreshDocuments();
}

async function selectCollection(name) {
  $("admin-collection").value = name;
  sessionStorage.setItem("appliance.admin-collection", name);
  await guarded($("documents-status"), refreshDocuments);
  $("documents-title").scrollIntoView({ block: "start" });
}

async function deleteCollection(c) {
  const what = `${c.documents} document${c.documents === 1 ? "" : "s"}`;
  if (!window.confirm(`Delete the collection ${c.name} and its ${what}? This cannot be undone.`)) return;
  await guarded($("collections-status"), async () => {
    await call(path(c.name), { method: "DELETE" });
    await refreshCollections();
    say($("collections-status"), `Deleted ${c.name}.`);
  });
}

async function createCollection(event) {
  event.preventDefault();
  const name = $("new-collection").value.trim();
  await guarded($("collections-status"), async () => {
    await call("/api/admin/collections", { method: "POST", json: { name } });
    $("new-collection").value = "";
    sessionStorage.setItem("appliance.admin-collection", name);
    await refreshCollections();
    say($("collections-status"), `Created ${name}.`);
  });
}

async function refreshDocuments() {
  const name = $("admin-collection").value;
  if (!name) {
    fillTable($("documents-table"), []);
    return;
  }
  const { documents } = await call(`${path(name)}/documents`);
  fillTable($("documents-table"), documents.map((d) => row(el("a", { href: docLink(d.doc_id) }, d.title || d.source),
    d.source, formatBytes(d.size), String(d.chunks), formatDate(d.created_at),
    el("button", { type: "button", class: "danger", onclick: () => deleteDocument(name, d) }, "Delete",
      el("span", { class: "visually-hidden" }, ` ${d.title || d.source}`)))));
  say($("documents-status"), documents.length
    ? `${documents.length} document${documents.length === 1 ? "" : "s"} in ${name}.`
    : `${name} has no documents yet: drop files above.`);
}

async function deleteDocument(collection, d) {
  if (!window.confirm(`Delete ${d.title || d.source} from ${collection}?`)) return;
  await guarded($("documents-status"), async () => {
    await call(`${path(collection)}/documents/${encodeURIComponent(d.doc_id)}`, { method: "DELETE" });
    await refreshCollections();
  });
}

async function refreshKeys() {
  const { keys } = await call("/api/admin/keys");
  fillTable($("keys-table"), keys.map((k) => row(k.key_id, k.role,
    k.collections ? k.collections.join(", ") || "none" : "all", formatDate(k.created), formatDate(k.last_used))));
  say($("keys-status"), keys.length ? "" : "No keys yet.");
}

function upload(files) {
  const collection = $("admin-collection").value;
  if (!files.length) return;
  if (!collection) {
    say($("documents-status"), "Create or choose a collection first.");
    return;
  }
  uploadJob(collection, [...files], $("jobs"), () => guarded($("collections-status"), refreshCollections));
}

function wireDropzone() {
  const zone = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    upload(event.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (event) => {
    upload(event.target.files);
    event.target.value = "";
  });
}

async function start() {
  const me = await boot();
  if (me.role !== "admin") {
    say($("denied"), "The admin page needs an admin key: you are signed in with a reader key. "
      + "Use Sign out to switch keys.");
    return;
  }
  $("main").append($("admin-controls").content.cloneNode(true));
  $("create-form").addEventListener("submit", createCollection);
  $("admin-collection").addEventListener("change", () => guarded($("documents-status"), refreshDocuments));
  wireDropzone();
  await guarded($("collections-status"), refreshCollections);
  await guarded($("keys-status"), refreshKeys);
  await guarded($("syncs-status"), () => refreshSyncs($("syncs-table"), $("syncs-status")));
}

start();
