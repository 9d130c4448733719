// The Q&A page's saved conversations: the list beside the thread (GET /api/conversations, newest first; open,
// rename in place, delete after an in-place confirmation), one conversation with its turns
// (GET /api/conversations/{id}), and the current conversation's id in the page's URL (`/?c=<id>`), so that a
// reload or a shared link reopens it. Rendering the turns themselves is turn.js's job.

import { call } from "./api.js";
import { el, fill } from "./dom.js";
import { showError } from "./page.js";

const path = (id) => `/api/conversations/${encodeURIComponent(id)}`;

/** A saved conversation with its turns: {conversation_id, title, collection, ..., turns: [...]}. */
export function fetchConversation(id) {
  return call(path(id));
}

/** The conversation id the URL names (`?c=`), or null. */
export function conversationInUrl() {
  return new URLSearchParams(window.location.search).get("c") || null;
}

/** Show conversation `id` (null: a new one) in the URL: "push" a history entry, "replace" this one, or "none". */
export function showInUrl(id, how) {
  if (how === "none") return;
  const url = new URL(window.location.href);
  if (id) url.searchParams.set("c", id);
  else url.searchParams.delete("c");
  if (url.href === window.location.href) return;
  if (how === "push") window.history.pushState({ conversation: id }, "", url);
  else window.history.replaceState({ conversation: id }, "", url);
}

/** "today 14:05", "yesterday", or the date. */
function when(seconds) {
  const date = new Date(seconds * 1000);
  const days = Math.floor((new Date().setHours(0, 0, 0, 0) - new Date(date).setHours(0, 0, 0, 0)) / 86_400_000);
  if (days === 0) return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (days === 1) return "yesterday";
  return date.toLocaleDateString();
}

export class ConversationList {
  /**
   * list: the <ul>; status: where errors and confirmations are said; home: what takes the focus when the list
   * has no item left to take it. onOpen(id): the user chose a conversation; onRenamed(conversation) and
   * onDeleted(id) after the server agreed.
   */
  constructor({ list, status, home, onOpen, onRenamed, onDeleted }) {
    Object.assign(this, { list, status, home, onOpen, onRenamed, onDeleted });
    this.conversations = [];
    this.current = null;
  }

  /** Read the list again from the server; resolves to it (an error is shown, and resolves to the old list). */
  async refresh() {
    try {
      this.conversations = (await call("/api/conversations")).conversations;
      this.render();
    } catch (err) {
      showError(this.status, err);
    }
    return this.conversations;
  }

  setCurrent(id) {
    this.current = id;
    for (const li of this.list.children) {
      const link = li.querySelector("a.conversation-open");
      li.classList.toggle("current", li.dataset.id === id);
      if (li.dataset.id === id) link?.setAttribute("aria-current", "true");
      else link?.removeAttribute("aria-current");
    }
  }

  say(text) {
    fill(this.status, text);
    this.status.hidden = !text;
  }

  render() {
    fill(this.list, ...this.conversations.map((c) => this.item(c)));
    const empty = !this.conversations.length;
    if (empty) this.say("No conversations yet: ask a question to start one.");
    else if (this.saidEmpty) this.say("");
    this.saidEmpty = empty;
    this.setCurrent(this.current);
  }

  item(c) {
    const li = el("li", { class: "conversation-item", "data-id": c.conversation_id });
    this.showItem(li, c);
    return li;
  }

  showItem(li, c) {
    const turns = `${c.turn_count} turn${c.turn_count === 1 ? "" : "s"}`;
    const open = el("a", { class: "conversation-open", href: `/?c=${encodeURIComponent(c.conversation_id)}`,
      "data-id": c.conversation_id, onclick: (event) => {
        if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
        event.preventDefault(); // a plain click opens it here; a modified one (new tab) follows the link
        this.onOpen(c.conversation_id);
      } }, c.title);
    fill(li, open,
      el("span", { class: "meta" }, `${c.collection} · ${turns} · ${when(c.updated_at)}`),
      el("span", { class: "item-actions" },
        el("button", { type: "button", class: "link rename", onclick: () => this.rename(li, c) }, "Rename",
          el("span", { class: "visually-hidden" }, ` ${c.title}`)),
        el("button", { type: "button", class: "link danger delete", onclick: () => this.confirmDelete(li, c) },
          "Delete", el("span", { class: "visually-hidden" }, ` ${c.title}`))));
    this.setCurrent(this.current);
  }

  /** Back from renaming or confirming: the item as listed, the focus on the button that started it. */
  restore(li, c, focus) {
    this.showItem(li, c);
    li.querySelector(`button.${focus}`)?.focus();
  }

  rename(li, c) {
    const id = `rename-${c.conversation_id}`;
    const input = el("input", { id, class: "rename-input", value: c.title, maxlength: 200, required: true,
      autocomplete: "off" });
    const form = el("form", { class: "rename-form", onsubmit: async (event) => {
      event.preventDefault();
      const title = input.value.trim();
      if (!title) return;
      try {
        const renamed = await call(path(c.conversation_id), { method: "PATCH", json: { title } });
        Object.assign(c, renamed);
        this.restore(li, c, "rename");
        this.say(`Renamed to “${renamed.title}”.`);
        this.onRenamed(renamed);
      } catch (err) {
        showError(this.status, err);
      }
    }, onkeydown: (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        this.restore(li, c, "rename");
      }
    } },
    el("label", { for: id, class: "visually-hidden" }, `New title for “${c.title}”`), input,
    el("span", { class: "item-actions" },
      el("button", { type: "submit", class: "primary" }, "Save"),
      el("button", { type: "button", onclick: () => this.restore(li, c, "rename") }, "Cancel")));
    fill(li, form);
    input.focus();
    input.select();
  }

  confirmDelete(li, c) {
    const turns = `${c.turn_count} turn${c.turn_count === 1 ? "" : "s"}`;
    const questionId = `delete-${c.conversation_id}`;
    const cancel = el("button", { type: "button", onclick: () => this.restore(li, c, "delete") }, "Cancel");
    fill(li, el("div", { class: "confirm", role: "group", "aria-labelledby": questionId,
      onkeydown: (event) => { if (event.key === "Escape") this.restore(li, c, "delete"); } },
    el("p", { id: questionId }, `Delete “${c.title}” and its ${turns}? This cannot be undone.`),
    el("span", { class: "item-actions" },
      el("button", { type: "button", class: "danger confirm-delete", onclick: () => this.delete(c) }, "Delete"),
      cancel)));
    cancel.focus();
  }

  async delete(c) {
    try {
      await call(path(c.conversation_id), { method: "DELETE" });
    } catch (err) {
      showError(this.status, err);
      return;
    }
    const at = this.conversations.indexOf(c);
    this.conversations = this.conversations.filter((x) => x !== c);
    this.render();
    this.say(`Deleted “${c.title}”.`);
    const links = this.list.querySelectorAll("a.conversation-open");
    (links[Math.min(at, links.length - 1)] ?? this.home).focus();
    this.onDeleted(c.conversation_id);
  }
}
