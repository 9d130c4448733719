// The Q&A page's wiring: the ask form (a question streams its answer from POST /api/ask, stream: true, read with
// fetch, into a turn.js Turn; Stop aborts it), the thread's conversation (a follow-up sends its id; a new one
// gets its id, title and URL once its first turn is saved), and switching conversations (conversations.js: the
// list and the URL; a saved conversation is rendered by the same Turn as a live answer), collection or history
// entry. The passage panel beside the thread is passage.js's.

import { ApiError, errorOf, request, sseEvents } from "./api.js";
import { ConversationList, conversationInUrl, fetchConversation, showInUrl } from "./conversations.js";
import { el, fill } from "./dom.js";
import { mountFilterControls, readFilters } from "./filters.js";
import { boot, fillCollectionSelect, readableCollections, showError } from "./page.js";
import { PassagePanel } from "./passage.js";
import { Turn } from "./turn.js";

const $ = (id) => document.getElementById(id);
let collections = [];
let controller = null;
let list = null;
let loading = 0; // bumped by every switch of conversation: a slower earlier load then renders nothing
/** The conversation in the thread: its id once saved (null: new), collection, title, passages by number (one
 * Map for the page's life, emptied by startOver: its turns hold it). */
const current = { id: null, collection: null, title: null, passages: new Map() };
const panel = new PassagePanel({ panel: $("passage"), title: $("passage-title"), meta: $("passage-meta"),
  text: $("passage-text"), note: $("passage-note"), link: $("passage-link"), close: $("passage-close") });
/** What every turn of the thread shares: the conversation's passages, and the panel a citation opens. */
const thread = { passages: current.passages, panel };

function updateNotice() {
  const chosen = collections.find((c) => c.name === $("collection").value);
  const admin = document.querySelector("[data-admin-only]:not([hidden])") !== null;
  const problem = !collections.length
    ? (admin ? "There are no collections yet." : "No collection is shared with your key. Ask an administrator.")
    : chosen && chosen.documents === 0 ? `The collection ${chosen.name} has no documents yet.` : null;
  $("notice").hidden = !problem;
  if (problem) {
    fill($("notice"), el("span", { role: "alert" }, problem),
      admin && " ", admin && el("a", { href: "/admin" }, "Add documents on the Admin page"));
  }
  $("ask-button").disabled = Boolean(problem) || controller !== null;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || controller) return;
  const collection = $("collection").value;
  const turn = new Turn(question, collection, thread);
  $("turns").append(turn.node);
  turn.node.scrollIntoView({ block: "nearest" });
  $("question").value = "";
  $("thread-status").hidden = true;
  const asked = controller = new AbortController();
  $("stop-button").hidden = false;
  updateNotice();
  try {
    const response = await request("/api/ask", { method: "POST", signal: asked.signal, json: {
      question, collection, stream: true, conversation_id: current.id ?? undefined,
      k: Number($("k").value) || 5, max_tokens: Number($("max-tokens").value) || 256, filters: readFilters() } });
    if (!response.ok) throw await errorOf(response);
    for await (const { event: name, data } of sseEvents(response)) {
      turn.on(name, data);
      if (name === "done" && turn.node.isConnected) saved(data, collection, question);
    }
    if (turn.node.dataset.state !== "done") throw new ApiError(0, "network", "the answer stream ended early");
  } catch (err) {
    if (err.name === "AbortError") turn.stopped();
    else turn.fail(err);
  } finally {
    if (controller === asked) { // not when the thread was switched meanwhile: that started over
      controller = null;
      $("stop-button").hidden = true;
      updateNotice();
      if (turn.node.isConnected) $("question").focus();
    }
  }
}

/** A turn was saved: a new conversation gets its id (in the URL, and at the top of the list). */
async function saved(done, collection, question) {
  if (!done.conversation_id) return;
  const started = current.id === null;
  Object.assign(current, { id: done.conversation_id, collection });
  if (started) {
    showInUrl(current.id, "replace");
    showTitle(question);
  }
  const listed = (await list.refresh()).find((c) => c.conversation_id === current.id);
  list.setCurrent(current.id);
  if (listed) showTitle(listed.title);
}

function showTitle(title) {
  current.title = title;
  fill($("thread-title"), title ?? "New conversation");
  fill($("thread-meta"), current.id ? `in ${current.collection}` : "Ask a question to start; follow-ups continue it.");
}

/** Empty the thread for a new conversation. */
function startOver(how, { focus = true } = {}) {
  loading += 1;
  controller?.abort();
  controller = null;
  $("stop-button").hidden = true;
  Object.assign(current, { id: null, collection: null });
  current.passages.clear();
  fill($("turns"));
  panel.close(false);
  showTitle(null);
  list.setCurrent(null);
  showInUrl(null, how);
  updateNotice();
  if (focus) $("question").focus();
}

/** Show saved conversation `id` in the thread (how: the history entry, see showInUrl). */
async function openConversation(id, how) {
  startOver("none", { focus: false });
  const mine = loading;
  const say = $("thread-status");
  fill(say, "Loading the conversation…");
  say.hidden = false;
  $("turns").setAttribute("aria-busy", "true");
  try {
    const conversation = await fetchConversation(id);
    if (mine !== loading) return;
    if (!collections.some((c) => c.name === conversation.collection)) {
      throw new ApiError(403, "forbidden", `collection ${conversation.collection} is not readable with this key`);
    }
    Object.assign(current, { id, collection: conversation.collection });
    $("collection").value = conversation.collection;
    fill($("turns"), ...conversation.turns.map((t) => Turn.saved(t, conversation, thread).node));
    showTitle(conversation.title);
    list.setCurrent(id);
    showInUrl(id, how);
    say.hidden = true;
    fill(say);
    updateNotice();
    $("turns").lastElementChild?.scrollIntoView({ block: "nearest" });
  } catch (err) {
    if (mine !== loading) return;
    showInUrl(null, how === "none" ? "none" : "replace");
    showError(say, err instanceof ApiError && err.status === 404
      ? new ApiError(404, err.type, "This conversation does not exist (it may have been deleted).") : err);
  } finally {
    if (mine === loading) $("turns").removeAttribute("aria-busy");
  }
}

function switchCollection() {
  const open = $("turns").childElementCount > 0;
  if (open && $("collection").value !== current.collection) {
    // a conversation stays over one collection: another collection starts a new one (the old one is listed)
    startOver("push", { focus: false });
    fill($("thread-status"), `A conversation keeps to one collection: this new one asks ${$("collection").value}.`);
    $("thread-status").hidden = false;
  }
  updateNotice();
}

async function start() {
  mountFilterControls($("filter-controls"));
  await boot();
  try {
    collections = fillCollectionSelect($("collection"), await readableCollections());
  } catch (err) {
    showError($("notice"), err);
  }
  list = new ConversationList({ list: $("conversation-list"), status: $("conversations-status"),
    home: $("new-conversation"),
    onOpen: (id) => openConversation(id, "push"),
    onRenamed: (c) => { if (c.conversation_id === current.id) showTitle(c.title); },
    onDeleted: (id) => { if (id === current.id) startOver("replace", { focus: false }); } });
  updateNotice();
  $("collection").addEventListener("change", switchCollection);
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop-button").addEventListener("click", () => controller?.abort());
  $("new-conversation").addEventListener("click", () => {
    fill($("thread-status"));
    $("thread-status").hidden = true;
    startOver("push");
  });
  window.addEventListener("popstate", () => {
    const id = conversationInUrl();
    if (id) openConversation(id, "none");
    else startOver("none");
  });
  const shared = conversationInUrl();
  showTitle(null);
  await Promise.all([list.refresh(), shared ? openConversation(shared, "replace") : null]);
  if (!shared) $("question").focus();
}

start();
