// Rating an answer of a saved conversation: "Helpful" / "Not helpful" (toggle buttons showing the saved
// rating) and an optional comment (POST /api/conversations/{id}/turns/{n}/feedback; a later rating replaces the
// earlier one, comment included). A "Not helpful" opens the comment box: what was wrong is what an evaluator
// needs most.

import { call } from "./api.js";
import { el, fill } from "./dom.js";
import { showError } from "./page.js";

const LABEL = { up: "Helpful", down: "Not helpful" };

/** The rating controls of turn `n` of conversation `conversationId`; `saved`: {rating, comment} or null. */
export function feedbackWidget(conversationId, n, saved) {
  let state = saved ? { rating: saved.rating, comment: saved.comment || null } : null;
  const id = `feedback-${conversationId}-${n}`;
  const status = el("span", { class: "feedback-status", role: "status" });
  const buttons = Object.fromEntries(["up", "down"].map((rating) => [rating,
    el("button", { type: "button", class: `rate ${rating}`, "aria-pressed": "false", onclick: () => rate(rating) },
      el("span", { class: "icon", "aria-hidden": "true" }), LABEL[rating])]));
  const comment = el("p", { class: "feedback-comment" });
  const textarea = el("textarea", { id: `${id}-comment`, rows: 2, maxlength: 4000 });
  const prompt = el("label", { for: `${id}-comment` });
  const form = el("form", { class: "feedback-form", hidden: true, onsubmit: saveComment,
    onkeydown: (event) => { if (event.key === "Escape") closeForm(); } },
  prompt, textarea,
  el("span", { class: "row" }, el("button", { type: "submit", class: "primary" }, "Save comment"),
    el("button", { type: "button", onclick: closeForm }, "Cancel")));
  const node = el("div", { class: "feedback", role: "group", "aria-label": `Rate answer ${n}` },
    el("div", { class: "row" }, el("span", { class: "feedback-label" }, "Was this answer helpful?"),
      buttons.up, buttons.down, status),
    comment, form);

  async function send(rating, text) {
    try {
      const answer = await call(`/api/conversations/${encodeURIComponent(conversationId)}/turns/${n}/feedback`,
        { method: "POST", json: text ? { rating, comment: text } : { rating } });
      state = { rating: answer.rating, comment: answer.comment };
      return true;
    } catch (err) {
      showError(status, err);
      return false;
    }
  }

  async function rate(rating) {
    if (state?.rating === rating) { // already so: offer the comment instead of saving the same again
      openForm();
      return;
    }
    if (!await send(rating, null)) return; // a new rating replaces the old one and its comment
    render();
    fill(status, `Saved: ${LABEL[rating].toLowerCase()}.`);
    if (rating === "down") openForm();
  }

  async function saveComment(event) {
    event.preventDefault();
    const text = textarea.value.trim();
    if (!await send(state.rating, text)) return;
    closeForm();
    fill(status, text ? "Comment saved." : "Comment removed.");
  }

  function openForm() {
    fill(prompt, state.rating === "down" ? "What was wrong, or what is the right answer? (optional)"
      : "Comment (optional)");
    textarea.value = state.comment ?? "";
    form.hidden = false;
    comment.hidden = true;
    textarea.focus();
  }

  function closeForm() {
    form.hidden = true;
    render();
    buttons[state.rating]?.focus();
  }

  function render() {
    for (const [rating, button] of Object.entries(buttons)) {
      button.setAttribute("aria-pressed", String(state?.rating === rating));
    }
    node.dataset.rating = state?.rating ?? "";
    comment.hidden = !state || !form.hidden;
    if (!state) return;
    const edit = el("button", { type: "button", class: "link", onclick: openForm },
      state.comment ? "Edit comment" : "Add a comment");
    fill(comment, state.comment && "Your comment: ", state.comment && el("q", {}, state.comment),
      state.comment && " ", edit);
  }

  render();
  return node;
}
