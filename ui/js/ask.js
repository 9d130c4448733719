// The Q&A page: ask a collection, stream the answer (POST /api/ask, stream: true, read with fetch), turn the
// citation markers into buttons that open the cited passage beside the answer, list the sources, and show the
// answer's facts (time to first token, prompt tokens reused from the KV cache vs computed).

import { ApiError, errorOf, request, sseEvents } from "./api.js";
import { docLink, el, fill, formatMs, highlighted, supportRanges, whereOf } from "./dom.js";
import { boot, fillCollectionSelect, readableCollections, showError } from "./page.js";

const $ = (id) => document.getElementById(id);
const MARKER = /\[(\d{1,3})\]/g;
let collections = [];
let controller = null;
let opener = null;

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
    this.answer = el("div", { class: "answer", "aria-busy": "true" });
    this.status = el("div", { class: "status", role: "status" }, `Searching ${collection}…`);
    this.facts = el("p", { class: "facts" });
    this.copy = el("button", { type: "button", class: "copy", disabled: true, onclick: () => this.copyAnswer() },
      "Copy answer");
    this.sourceList = el("ol", { class: "source-list" });
    this.sourceSummary = el("summary", {}, "Sources");
    this.node = el("li", { class: "turn", "data-state": "waiting" },
      el("p", { class: "question" }, el("span", { class: "who" }, "You asked "), el("q", {}, question),
        el("span", { class: "meta" }, ` in ${collection}`)),
      this.answer, this.status, this.facts, el("div", { class: "turn-actions" }, this.copy),
      el("details", { class: "sources", open: true }, this.sourceSummary, this.sourceList));
  }

  setState(state) {
    this.node.dataset.state = state;
    this.answer.setAttribute("aria-busy", String(state === "waiting" || state === "streaming"));
  }

  /** Apply one SSE event of the answer stream. */
  on(event, data) {
    if (event === "sources") {
      this.sources = data.sources;
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

  marker({ n, kind, sentence }) {
    const source = this.sources.find((s) => s.n === n);
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
    fill(this.sourceSummary, `Sources (${this.sources.length})`);
    const kinds = new Map((this.citations ?? []).map((c) => [c.n, c.kind === "cited" ? "cited" : "matched"]));
    fill(this.sourceList, ...this.sources.map((s) => el("li", { class: "source", value: s.n },
      el("button", { type: "button", class: "link source-open",
        onclick: (event) => openPassage(s, this.question, event.currentTarget, {}) }, `[${s.n}] ${s.title}`),
      kinds.has(s.n) && el("span", { class: "badge" }, kinds.get(s.n)),
      el("span", { class: "meta" }, ` ${whereOf(s)}`),
      el("p", { class: "snippet" }, s.text.length > 180 ? `${s.text.slice(0, 180)}…` : s.text))));
  }

  finish(done) {
    this.setState("done");
    this.status.hidden = this.sources.length > 0; // without sources, keep saying the answer is not grounded
    this.copy.disabled = false;
    const { ttft_ms: ttft, total_ms: total } = done.timings;
    const { tokens_reused: reused, tokens_computed: computed } = done.kv;
    fill(this.facts, `First token ${formatMs(ttft)} · prompt ${reused + computed} tokens: ${reused} reused from `
      + `cache, ${computed} computed · ${done.usage.completion_tokens} tokens generated in ${formatMs(total)}`
      + (done.finish_reason === "length" ? " · stopped at the length limit" : ""));
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
  fill($("passage-note"), kind === "inferred"
    ? "The model did not cite this passage; the appliance matched it to the sentence afterwards."
    : unsupported ? "This passage does not clearly support the sentence that cites it." : "");
  $("passage-link").href = docLink(source.doc_id, source.chunk_id);
  $("passage").hidden = false;
  $("passage").focus();
}

function closePassage() {
  $("passage").hidden = true;
  opener?.focus();
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
  const turn = new Turn(question, $("collection").value);
  $("turns").append(turn.node);
  turn.node.scrollIntoView({ block: "nearest" });
  $("question").value = "";
  controller = new AbortController();
  $("stop-button").hidden = false;
  updateNotice();
  try {
    const response = await request("/api/ask", { method: "POST", signal: controller.signal, json: {
      question, collection: $("collection").value, stream: true,
      k: Number($("k").value) || 5, max_tokens: Number($("max-tokens").value) || 256 } });
    if (!response.ok) throw await errorOf(response);
    for await (const { event: name, data } of sseEvents(response)) turn.on(name, data);
    if (turn.node.dataset.state !== "done") throw new ApiError(0, "network", "the answer stream ended early");
  } catch (err) {
    if (err.name === "AbortError") turn.stopped();
    else turn.fail(err);
  } finally {
    controller = null;
    $("stop-button").hidden = true;
    updateNotice();
    $("question").focus();
  }
}

async function start() {
  await boot();
  try {
    collections = fillCollectionSelect($("collection"), await readableCollections());
  } catch (err) {
    showError($("notice"), err);
  }
  updateNotice();
  $("collection").addEventListener("change", updateNotice);
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop-button").addEventListener("click", () => controller?.abort());
  $("clear-button").addEventListener("click", () => { fill($("turns")); closePassage(); });
  $("passage-close").addEventListener("click", closePassage);
  $("passage").addEventListener("keydown", (event) => { if (event.key === "Escape") closePassage(); });
  $("question").focus();
}

start();
