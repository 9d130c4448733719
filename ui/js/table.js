// Passage text with its Markdown tables (retrieval/parse/tables.py: a header row, a `| --- |` rule, one line
// per row) shown as <table>s and the rest as text. Highlights are [start, end) ranges of the whole text; in a
// table each is clipped to the cells it covers, so a highlighted row shows as marked cells. Every cell goes in
// as text nodes (textContent), never as HTML: document text is untrusted.

import { el, fill } from "./dom.js";

const RULE = /^\|(\s*:?-{3,}:?\s*\|)+$/;

function isTableLine(line) {
  const trimmed = line.trim();
  return trimmed.length >= 2 && trimmed.startsWith("|") && trimmed.endsWith("|");
}

/**
 * The text as blocks, in order: {table: false, start, end} for text, {table: true, rows: [[[start, end], ...]]}
 * for a table (the rule left out; each cell a [start, end) range of the text, surrounding spaces left out).
 * A run of table lines is a table only when its second line is the rule; otherwise it stays text.
 */
export function textBlocks(text) {
  const lines = [];
  for (let start = 0; start <= text.length;) {
    const newline = text.indexOf("\n", start);
    const end = newline === -1 ? text.length : newline;
    lines.push({ start, end, table: isTableLine(text.slice(start, end)) });
    start = end + 1;
  }
  const blocks = [];
  let textStart = 0;
  for (let i = 0; i < lines.length;) {
    let j = i;
    while (j < lines.length && lines[j].table) j += 1;
    const rule = lines[i + 1];
    if (j - i >= 2 && rule && RULE.test(text.slice(rule.start, rule.end).trim())) {
      if (lines[i].start - 1 > textStart) blocks.push({ table: false, start: textStart, end: lines[i].start - 1 });
      const rows = lines.slice(i, j).filter((_, k) => k !== 1).map((line) => cellRanges(text, line.start, line.end));
      blocks.push({ table: true, rows });
      textStart = lines[j - 1].end + 1;
      i = j;
    } else {
      i = Math.max(j, i + 1);
    }
  }
  if (textStart < text.length) blocks.push({ table: false, start: textStart, end: text.length });
  return blocks;
}

/** The [start, end) ranges of one row line's cells: between unescaped pipes, trimmed. */
function cellRanges(text, start, end) {
  const pipes = [];
  for (let at = start; at < end; at += 1) {
    if (text[at] === "\\") at += 1;
    else if (text[at] === "|") pipes.push(at);
  }
  const cells = [];
  for (let k = 0; k + 1 < pipes.length; k += 1) {
    let a = pipes[k] + 1;
    let b = pipes[k + 1];
    while (a < b && /\s/.test(text[a])) a += 1;
    while (b > a && /\s/.test(text[b - 1])) b -= 1;
    cells.push([a, b]);
  }
  return cells;
}

/** Text and <mark> nodes for text[start, end) with `ranges` clipped to it; `clean` rewrites each piece. */
function marked(text, start, end, ranges, clean = (s) => s) {
  const parts = [];
  let at = start;
  for (const [a, b] of [...ranges].sort((x, y) => x[0] - y[0])) {
    const from = Math.max(a, at);
    const to = Math.min(b, end);
    if (from >= to) continue;
    if (from > at) parts.push(clean(text.slice(at, from)));
    parts.push(el("mark", {}, clean(text.slice(from, to))));
    at = to;
  }
  if (at < end) parts.push(clean(text.slice(at, end)));
  return parts.filter((p) => p !== "");
}

const unescapePipes = (s) => s.replaceAll("\\|", "|");

function tableNode(text, rows, ranges) {
  const row = (cells, tag) => el("tr", {}, ...cells.map(([a, b]) => el(tag, {}, ...marked(text, a, b, ranges, unescapePipes))));
  return el("table", { class: "md-table" },
    el("thead", {}, row(rows[0], "th")),
    el("tbody", {}, ...rows.slice(1).map((cells) => row(cells, "td"))));
}

/** Fill `node` with `text`: its tables as <table class="md-table">, the rest as text, `ranges` as <mark>s. */
export function richText(node, text, ranges = []) {
  const parts = textBlocks(text).flatMap((block) => block.table
    ? [tableNode(text, block.rows, ranges)]
    : marked(text, block.start, block.end, ranges));
  return fill(node, ...parts);
}
