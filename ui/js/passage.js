// The Q&A page's passage panel: one passage beside the thread, opened from a citation marker or a source, with
// the sentences that back the citing text highlighted (its tables shown as tables, a backing row's cells
// marked), a note when the passage is inferred, does not clearly support the sentence, or its document was
// deleted since, and a link to the passage in its whole document.
// Close (or Escape) gives the focus back to what opened it.

import { docLink, fill, supportRanges, whereOf } from "./dom.js";
import { richText } from "./table.js";

export class PassagePanel {
  /**
   * panel: the focusable <aside>; title, meta, text, note, link: its parts; close: its close button.
   */
  constructor({ panel, title, meta, text, note, link, close }) {
    Object.assign(this, { panel, title, meta, text, note, link });
    this.opener = null;
    close.addEventListener("click", () => this.close());
    panel.addEventListener("keydown", (event) => { if (event.key === "Escape") this.close(); });
  }

  /**
   * Show passage `source` ({n, title, text, doc_id, chunk_id, gone?, ...}), highlighting what backs `citing`
   * (a sentence or the question); `from`: the control that opened it, focused again on close; kind ("cited" or
   * "inferred") and unsupported: how the answer cites it; ranges: [start, end) ranges of source.text to highlight
   * instead (an evidence quote).
   */
  open(source, citing, from, { kind, unsupported, ranges } = {}) {
    this.opener = from;
    fill(this.title, `[${source.n}] ${source.title}`);
    fill(this.meta, whereOf(source) || source.source);
    richText(this.text, source.text, ranges ?? supportRanges(source.text, citing));  // tables as tables, marks kept
    fill(this.note, source.gone
      ? "Its document has been deleted since: this is the text the answer was given."
      : kind === "inferred"
        ? "The model did not cite this passage; the appliance matched it to the sentence afterwards."
        : unsupported ? "This passage does not clearly support the sentence that cites it." : "");
    this.link.hidden = Boolean(source.gone);
    this.link.href = source.gone ? "/" : docLink(source.doc_id, source.chunk_id);
    this.panel.hidden = false;
    this.panel.focus();
  }

  /** Hide the panel; refocus: give the focus back to what opened it (if it is still on the page). */
  close(refocus = true) {
    this.panel.hidden = true;
    if (refocus && this.opener?.isConnected) this.opener.focus();
  }
}
