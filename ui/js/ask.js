// The Q&A page: ask a collection, stream the answer (POST /api/ask, stream: true, read with fetch), turn the
// citation markers into buttons that open the cited passage beside the answer, list the sources, and show the
// answer's facts (time to first token, prompt tokens reused from the KV cache vs computed). Questions are turns
// of a saved conversation: follow-ups send its id, and a saved conversation (conversations.js: the list, the
// URL) is rendered by the same Turn as a live answer.

import { ApiError, errorOf, request, sseEvents } from "./api.js";
import { ConversationList, conversationInUrl, fetchConversation, showInUrl } from "./conversations.js";
import { docLink, el, fill, formatMs, highlighted, supportRanges, whereOf } from "./dom.js";
import { feedbackWidget } from "./feedback.js";
import { boot, fillCollectionSelect, readableCollections, showError } from "./page.js";

const $ = (id) => document.getElementById(id);
const MARKER = /\[(\d{1,3})\]/g;
let collections = [];
let controller = null;
let opener = null;
let list = null;
let loading = 0; // bumped by every switch of conversation: a slower earlier load then renders nothing
/** The conversation in the thread: its id once saved (null: new), collection, title, passages by number. */
const current = { id: null, collection: null, title: null, passages: new Map() };
const same = (a, b) => a.trim().replace(/\s+/g, " ").toLowerCase() === b.trim().replace(/\s+/g, " ").toLowerCase();

/** The answer's sentences as {start, end, text} (trimmed), split as the server's citation check splits them. */
function sentenceSpans(text) {
  const spans = [];
  let start = 0;
  const cut = (end) => {
    const raw = text.slice(start, end);
    const lead = raw.length - raw.trimStart().length;
    if (raw.trim()) spans.push({ start: start + lead, end: start + raw.trimEnd().length, text: raw.trim() });
  };
  for (const m of text.matchAll(/(?<=[.!?])\s+|\n+/g)) {
    cut(m.index);
    start = m.index + m[0].length;
  }
  cut(text.length);
  return spans;
}

class Turn {
  constructor(question, collection) {
    this.text = "";
    this.sources = [];
    this.citations = null;
    this.question = question;
    this.searched = el("p", { class: "searched meta", hidden: true });
    this.answer = el("div", { class: "answer", "aria-busy": "true" });
    this.status = el("div", { class: "status", role: "status" }, `Searching ${collection}…`);
    this.facts = el("p", { class: "facts" });
    this.copy = el("button", { type: "button", class: "copy", disabled: true, onclick: () => this.copyAnswer() },
      "Copy answer");
    this.sourceList = el("ol", { class: "source-list" });
    this.sourceSummary = el("summary", {}, "Sources");
    this.actions = el("div", { class: "turn-actions" }, this.copy);
    this.node = el("li", { class: "turn", "data-state": "waiting" },
      el("p", { class: "question" }, el("span", { class: "who" }, "You asked "), el("q", {}, question),
        el("span", { class: "meta" }, ` in ${collection}`)),
      this.searched, this.answer, this.status, this.facts, this.actions,
      el("details", { class: "sources", open: true }, this.sourceSummary, this.sourceList));
  }

  /** A saved turn (GET /api/conversations/{id}), rendered as its live answer was. */
  static saved(t, conversation) {
    const turn = new Turn(t.question, conversation.collection);
    turn.on("sources", { sources: t.sources, retrieval_query: t.retrieval_query });
    turn.text = t.answer;
    turn.citations = t.citations;
    turn.renderAnswer();
    turn.renderSources();
    turn.finish({ ...t, conversation_id: conversation.conversation_id, turn: t.n });
    return turn;
  }

  setState(state) {
    this.node.dataset.state = state;
    this.answer.setAttribute("aria-busy", String(state === "waiting" || state === "streaming"));
  }

  /** Apply one SSE event of the answer stream. */
  on(event, data) {
    if (event === "sources") {
      this.sources = data.sources;
      for (const s of this.sources) current.passages.set(s.n, s);
      const query = data.retrieval_query;
      this.searched.hidden = !query || same(query, this.question); // a follow-up, searched for as rewritten
      fill(this.searched, "Searched for: ", el("q", {}, query ?? ""));
      this.setState("streaming");
      fill(this.status, this.sources.length ? "Writing the answer…"
        : "No passage of this collection matches (is it empty?): the answer is not based on any document.");
      this.renderSources();
    } else if (event === "token") {
      this.text += data.text;
      this.renderAnswer();
    } else if (event === "citations") {
      this.citations = data.citations;
      this.renderAnswer();
      this.renderSources();
    } else if (event === "done") {
      this.finish(data);
    } else if (event === "error") {
      throw new ApiError(data.error.type === "overloaded" ? 503 : 500, data.error.type, data.error.message);
    }
  }

  renderAnswer() {
    // the model's own markers, and a marker after each sentence the server matched to a passage afterwards
    const inferred = new Map(); // sentence -> passage numbers, one per occurrence of the sentence
    for (const c of this.citations ?? []) {
      for (const s of c.sentences.filter((s) => s.kind === "inferred")) {
        inferred.set(s.text, [...(inferred.get(s.text) ?? []), c.n]);
      }
    }
    const marks = [];
    for (const span of sentenceSpans(this.text)) {
      for (const m of span.text.matchAll(MARKER)) {
        marks.push({ start: span.start + m.index, end: span.start + m.index + m[0].length, n: Number(m[1]),
          kind: "cited", sentence: span.text });
      }
      const n = inferred.get(span.text)?.shift();
      if (n !== undefined) marks.push({ start: span.end, end: span.end, n, kind: "inferred", sentence: span.text });
    }
    const parts = [];
    let at = 0;
    for (const mark of marks) {
      if (mark.start < at) continue;
      parts.push(this.text.slice(at, mark.start), this.marker(mark));
      at = mark.end;
    }
    parts.push(this.text.slice(at));
    fill(this.answer, ...parts.filter((p) => p !== ""));
  }

  /** Passage `n` as this answer knows it: among its sources, its citations (a passage of an earlier turn of the
   * conversation carries its text as the quote), or the conversation's. */
  passage(n) {
    const cited = this.citations?.find((c) => c.n === n);
    return this.sources.find((s) => s.n === n)
      ?? (cited && { ...cited, text: cited.quote, source: "" })
      ?? current.passages.get(n);
  }

  marker({ n, kind, sentence }) {
    const source = this.passage(n);
    if (!source) return `[${n}]`; // not a passage that was given: plain text
    const checked = this.citations?.find((c) => c.n === n)?.sentences.find((s) => s.text === sentence);
    const unsupported = kind === "cited" && checked && !checked.supported;
    const label = kind === "inferred" ? `Passage ${n}, ${source.title} (inferred: not cited by the model)`
      : `Passage ${n}, ${source.title}${unsupported ? " (does not clearly support this sentence)" : ""}`;
    return el("button", { type: "button", class: `cite ${kind}${unsupported ? " unsupported" : ""}`,
      "data-n": n, "aria-label": label, title: label,
      onclick: (event) => openPassage(source, sentence, event.currentTarget, { kind, unsupported }) }, `[${n}]`);
  }

  renderSources() {
    // this turn's passages, then those of earlier turns that its answer cites
    const shown = new Set(this.sources.map((s) => s.n));
    const earlier = (this.citations ?? []).filter((c) => !shown.has(c.n)).map((c) => this.passage(c.n));
    fill(this.sourceSummary, `Sources (${this.sources.length})`);
    const kinds = new Map((this.citations ?? []).map((c) => [c.n, c.kind === "cited" ? "cited" : "matched"]));
    fill(this.sourceList, ...[...this.sources, ...earlier].map((s) => el("li",
      { class: `source${s.gone ? " gone" : ""}`, value: s.n },
      el("button", { type: "button", class: "link source-open",
        onclick: (event) => openPassage(s, this.question, event.currentTarget, {}) }, `[${s.n}] ${s.title}`),
      kinds.has(s.n) && el("span", { class: "badge" }, kinds.get(s.n)),
      !shown.has(s.n) && el("span", { class: "badge quiet" }, "from an earlier answer"),
      s.gone && el("span", { class: "badge gone" }, "document deleted"),
      el("span", { class: "meta" }, ` ${whereOf(s)}`),
      el("p", { class: "snippet" }, s.text.length > 180 ? `${s.text.slice(0, 180)}…` : s.text))));
  }

  /** The done event (or a saved turn): the facts, and the rating controls once the turn is saved. */
  finish(done) {
    this.setState("done");
    this.status.hidden = this.sources.length > 0; // without sources, keep saying the answer is not grounded
    this.copy.disabled = false;
    const { ttft_ms: ttft, total_ms: total, rewrite_ms: rewriteMs } = done.timings ?? {};
    const { tokens_reused: reused, tokens_computed: computed } = done.kv ?? {};
    if (ttft !== undefined && reused !== undefined) {
      fill(this.facts, `First token ${formatMs(ttft)} · prompt ${reused + computed} tokens: ${reused} reused from `
        + `cache, ${computed} computed · ${done.usage?.completion_tokens ?? "?"} tokens generated in `
        + `${formatMs(total)}`
        + (done.rewrite && done.rewrite !== "none" && rewriteMs ? ` · follow-up rewritten in ${formatMs(rewriteMs)}`
          : "")
        + (done.finish_reason === "length" ? " · stopped at the length limit" : ""));
    }
    if (done.conversation_id && done.turn) {
      this.node.dataset.turn = done.turn;
      this.actions.append(feedbackWidget(done.conversation_id, done.turn, done.feedback ?? null));
    }
  }

  fail(err) {
    this.setState("error");
    this.status.hidden = false;
    showError(this.status, err);
    if (this.text) this.copy.disabled = false;
  }

  stopped() {
    this.setState("stopped");
    this.status.hidden = false;
    fill(this.status, "Stopped before the answer was complete.");
    if (this.text) this.copy.disabled = false;
  }

  async copyAnswer() {
    try {
      await navigator.clipboard.writeText(this.text);
      fill(this.copy, "Copied");
    } catch {
      fill(this.copy, "Copy failed: select the text instead");
    }
    setTimeout(() => fill(this.copy, "Copy answer"), 2000);
  }
}

function openPassage(source, citing, from, { kind, unsupported }) {
  opener = from;
  fill($("passage-title"), `[${source.n}] ${source.title}`);
  fill($("passage-meta"), whereOf(source) || source.source);
  highlighted($("passage-text"), source.text, supportRanges(source.text, citing));
  fill($("passage-note"), source.gone
    ? "Its document has been deleted since: this is the text the answer was given."
    : kind === "inferred"
      ? "The model did not cite this passage; the appliance matched it to the sentence afterwards."
      : unsupported ? "This passage does not clearly support the sentence that cites it." : "");
  $("passage-link").hidden = Boolean(source.gone);
  $("passage-link").href = source.gone ? "/" : docLink(source.doc_id, source.chunk_id);
  $("passage").hidden = false;
  $("passage").focus();
}

function closePassage(refocus = true) {
  $("passage").hidden = true;
  if (refocus && opener?.isConnected) opener.focus();
}

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
  const turn = new Turn(question, collection);
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
      k: Number($("k").value) || 5, max_tokens: Number($("max-tokens").value) || 256 } });
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
  closePassage(false);
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
    fill($("turns"), ...conversation.turns.map((t) => Turn.saved(t, conversation).node));
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
  $("passage-close").addEventListener("click", () => closePassage());
  $("passage").addEventListener("keydown", (event) => { if (event.key === "Escape") closePassage(); });
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
