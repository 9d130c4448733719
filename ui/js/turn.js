// One question/answer turn of the Q&A thread, live or saved: the question, "Searched for: …" when a follow-up's
// retrieval query was rewritten, the evidence once the answer is checked (the passage sentences that best back
// it, quoted above it, each opening its passage), the answer as it streams (SSE events of POST /api/ask) with its
// citation markers as buttons that open the cited passage (the model's own markers, and one after each sentence
// the server's citation check matched to a passage afterwards), the sources, the answer's facts (time to first
// token, prompt tokens reused from the KV cache vs computed), copying, and the rating once the turn is saved.
// A saved turn (GET /api/conversations/{id}) is rendered by the same code as a live answer.

import { ApiError } from "./api.js";
import { el, fill, formatMs, whereOf } from "./dom.js";
import { feedbackWidget } from "./feedback.js";
import { showError } from "./page.js";

const MARKER = /\[(\d{1,3})\]/g;
const same = (a, b) => a.trim().replace(/\s+/g, " ").toLowerCase() === b.trim().replace(/\s+/g, " ").toLowerCase();

/** The answer's sentences as {start, end, text} (trimmed), split as the server's citation check splits them: a
 * segment of nothing but citation markers (the `[2]` of "It is os.path. [2]") ends the sentence before it. */
function sentenceSpans(text) {
  const spans = [];
  let start = 0;
  const cut = (end) => {
    const raw = text.slice(start, end);
    const bare = raw.replace(MARKER, " ");
    const last = spans.at(-1);
    if (last && bare !== raw && !/[A-Za-z0-9_]/.test(bare)) {
      last.end = start + raw.trimEnd().length;
      last.text = text.slice(last.start, last.end);
    } else if (raw.trim()) {
      const lead = raw.length - raw.trimStart().length;
      spans.push({ start: start + lead, end: start + raw.trimEnd().length, text: raw.trim() });
    }
  };
  // after .!? (with the markers that follow on its line) and whitespace, or at newlines: as the server splits
  for (const m of text.matchAll(/(?<=[.!?])((?:[ \t]*\[\d{1,3}\][.,;:!?]?)*)\s+|\n+/g)) {
    cut(m.index + (m[1] ?? "").length);
    start = m.index + m[0].length;
  }
  cut(text.length);
  return spans;
}

/** Where evidence `e`'s quote is in `text` (its passage's): its offsets, or the quote found (the offsets count
 * characters, not UTF-16 units) -> ranges for the panel's highlight, or undefined when it is not there. */
function quoteRanges(text, e) {
  const at = text.slice(e.start, e.end) === e.quote ? e.start : text.indexOf(e.quote);
  return at < 0 ? undefined : [[at, at + e.quote.length]];
}

export class Turn {
  /**
   * One question of the conversation `thread` in `collection`; thread: {passages, panel}, where passages is the
   * conversation's passages by number (a Map this turn adds its sources to, and reads an earlier turn's from)
   * and panel opens one passage (passage.js's PassagePanel: open(source, citing, from, {kind, unsupported})).
   */
  constructor(question, collection, thread) {
    this.thread = thread;
    this.text = "";
    this.sources = [];
    this.citations = null;
    this.question = question;
    this.searched = el("p", { class: "searched meta", hidden: true });
    this.evidence = el("div", { class: "evidence", role: "group", "aria-label": "Evidence from the sources",
      hidden: true });
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
      this.searched, this.evidence, this.answer, this.status, this.facts, this.actions,
      el("details", { class: "sources", open: true }, this.sourceSummary, this.sourceList));
  }

  /** A saved turn (GET /api/conversations/{id}), rendered as its live answer was. */
  static saved(t, conversation, thread) {
    const turn = new Turn(t.question, conversation.collection, thread);
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
      for (const s of this.sources) this.thread.passages.set(s.n, s);
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
      this.renderEvidence(data.evidence);
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
      ?? this.thread.passages.get(n);
  }

  marker({ n, kind, sentence }) {
    const source = this.passage(n);
    if (!source) return `[${n}]`; // not a passage that was given: plain text
    const checked = this.citations?.find((c) => c.n === n)?.sentences.find((s) => s.text === sentence);
    const unsupported = kind === "cited" && checked && !checked.supported;
    const { panel } = this.thread;
    const label = kind === "inferred" ? `Passage ${n}, ${source.title} (inferred: not cited by the model)`
      : `Passage ${n}, ${source.title}${unsupported ? " (does not clearly support this sentence)" : ""}`;
    return el("button", { type: "button", class: `cite ${kind}${unsupported ? " unsupported" : ""}`,
      "data-n": n, "aria-label": label, title: label,
      onclick: (event) => panel.open(source, sentence, event.currentTarget, { kind, unsupported }) }, `[${n}]`);
  }

  /** The passage sentences that best back the answer ([{n, title, page, quote, start, end, ...}], best first),
   * quoted above it, each opening its passage with the quote highlighted; none given (an older saved turn):
   * nothing changes. */
  renderEvidence(evidence) {
    if (!evidence) return;
    const { panel } = this.thread;
    this.evidence.hidden = evidence.length === 0;
    fill(this.evidence, ...evidence.map((e) => {
      const source = this.passage(e.n) ?? { ...e, text: e.quote, source: "" };
      return el("figure", { class: "evidence-item" },
        el("blockquote", { class: "evidence-quote" }, e.quote),
        el("figcaption", {}, el("button", { type: "button", class: "link evidence-open",
          onclick: (event) => panel.open(source, e.quote, event.currentTarget,
            { ranges: quoteRanges(source.text, e) }) }, `[${e.n}] ${e.title}`),
        whereOf(source) ? el("span", { class: "meta" }, ` · ${whereOf(source)}`) : null));
    }));
  }

  renderSources() {
    // this turn's passages, then those of earlier turns that its answer cites
    const { panel } = this.thread;
    const shown = new Set(this.sources.map((s) => s.n));
    const earlier = (this.citations ?? []).filter((c) => !shown.has(c.n)).map((c) => this.passage(c.n));
    fill(this.sourceSummary, `Sources (${this.sources.length})`);
    const kinds = new Map((this.citations ?? []).map((c) => [c.n, c.kind === "cited" ? "cited" : "matched"]));
    fill(this.sourceList, ...[...this.sources, ...earlier].map((s) => el("li",
      { class: `source${s.gone ? " gone" : ""}`, value: s.n },
      el("button", { type: "button", class: "link source-open",
        onclick: (event) => panel.open(s, this.question, event.currentTarget, {}) }, `[${s.n}] ${s.title}`),
      kinds.has(s.n) && el("span", { class: "badge" }, kinds.get(s.n)),
      !shown.has(s.n) && el("span", { class: "badge quiet" }, "from an earlier answer"),
      s.gone && el("span", { class: "badge gone" }, "document deleted"),
      el("span", { class: "meta" }, ` ${whereOf(s)}`),
      el("p", { class: "snippet" }, s.text.length > 180 ? `${s.text.slice(0, 180)}…` : s.text))));
  }

  /** The done event (or a saved turn): the facts, and the rating controls once the turn is saved. */
  finish(done) {
    this.setState("done");
    this.renderEvidence(done.evidence);
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
