// DOM helpers. Every piece of text (the user's, a document's, the model's) goes in through text nodes, never
// through HTML parsing: document passages are untrusted.

/**
 * el("button", {class: "x", type: "button", onclick: fn, hidden: true}, "text", childNode, ...)
 * Strings become text nodes; on* props become listeners; true/false props set or omit the attribute.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** Replace a node's children (strings as text). */
export function fill(node, ...children) {
  node.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const STOPWORDS = new Set(`a an the and or but if of to in on at by for with from as is are was were be been being it
its this that these those there here which who whom what when where why how do does did not no can could should would
will shall may might must you your we our they their he she his her i me my`.split(/\s+/));
const WORD = /[\p{L}\p{N}_]+/gu;

/** The lower-cased content words of a text (no stopwords, no single letters). */
export function contentWords(text) {
  const words = new Set();
  for (const [w] of text.matchAll(WORD)) {
    const lower = w.toLowerCase();
    if (lower.length > 1 && !STOPWORDS.has(lower)) words.add(lower);
  }
  return words;
}

/** [start, end) ranges of the words of `text` that are among `terms` (or a term plus a plural "s"). */
export function termRanges(text, terms) {
  const ranges = [];
  for (const m of text.matchAll(WORD)) {
    const lower = m[0].toLowerCase();
    if (terms.has(lower) || (lower.endsWith("s") && terms.has(lower.slice(0, -1)))) {
      ranges.push([m.index, m.index + m[0].length]);
    }
  }
  return ranges;
}

/** [start, end) ranges of the sentences of `passage` that share the most content words with `citing`. */
export function supportRanges(passage, citing) {
  const wanted = contentWords(citing);
  const sentences = [];
  const boundary = /[^.!?\n]+(?:[.!?]+|\n|$)/g;
  for (const m of passage.matchAll(boundary)) {
    if (!m[0].trim()) continue;
    let score = 0;
    for (const w of contentWords(m[0])) if (wanted.has(w)) score += 1;
    const lead = m[0].length - m[0].trimStart().length;
    sentences.push({ start: m.index + lead, end: m.index + m[0].trimEnd().length, score });
  }
  const best = Math.max(0, ...sentences.map((s) => s.score));
  return best === 0 ? [] : sentences.filter((s) => s.score === best).map((s) => [s.start, s.end]);
}

/** Fill `node` with `text`, wrapping the given [start, end) ranges in <mark> (as text nodes, never HTML). */
export function highlighted(node, text, ranges) {
  const parts = [];
  let at = 0;
  for (const [start, end] of [...ranges].sort((a, b) => a[0] - b[0])) {
    if (start < at) continue;
    parts.push(text.slice(at, start), el("mark", {}, text.slice(start, end)));
    at = end;
  }
  parts.push(text.slice(at));
  return fill(node, ...parts.filter((p) => p !== ""));
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function formatDate(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "—";
}

export function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** "page 3 · Setup › Install" (whatever of page and headings the passage has). */
export function whereOf(passage) {
  const parts = [];
  if (passage.page) parts.push(`page ${passage.page}`);
  const headings = (passage.heading_path || []).filter((h) => h && h !== passage.title);
  if (headings.length) parts.push(headings.join(" › "));
  return parts.join(" · ");
}

export function docLink(docId, chunkId) {
  const query = new URLSearchParams({ id: docId });
  if (chunkId !== undefined && chunkId !== null) query.set("chunk", String(chunkId));
  return `/doc?${query}`;
}
