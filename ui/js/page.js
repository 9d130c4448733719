// What every page shares: sign-in with an API key, the account line in the header, the admin link (admins
// only), error messages, and the list of collections the key may read.

import { ApiError, call, session, whoami } from "./api.js";
import { el, fill } from "./dom.js";

/**
 * Resolve to the caller's identity {key_id, role, collections} once the server accepts the session's key
 * (or needs none), asking for a key while it answers 401. Reveals #main and, for admins, the admin links.
 */
export async function boot() {
  let rejected = false;
  for (;;) {
    try {
      const me = await whoami();
      showAccount(me);
      document.getElementById("login")?.remove();
      document.getElementById("main").hidden = false;
      return me;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) {
        fill(document.getElementById("boot-error") ?? document.body.appendChild(el("p", { id: "boot-error" })),
          el("span", { role: "alert", class: "error" }, describe(err)));
        throw err;
      }
      rejected = rejected || Boolean(session.key());
      session.signOut();
      await askForKey(rejected ? "That key was not accepted. Check it and try again." : null);
      rejected = true;
    }
  }
}

function askForKey(problem) {
  return new Promise((resolve) => {
    const input = el("input", { id: "login-key", type: "password", name: "key", autocomplete: "off", required: true,
      spellcheck: "false", "aria-describedby": "login-help" });
    const form = el("form", { class: "login card", "aria-labelledby": "login-title" },
      el("h1", { id: "login-title" }, "Sign in"),
      el("p", { id: "login-help" }, "This appliance needs an API key. It is kept in this browser tab only, ",
        "until you close it or sign out."),
      problem && el("p", { role: "alert", class: "error" }, problem),
      el("label", { for: "login-key" }, "API key"), input,
      el("button", { type: "submit", class: "primary" }, "Sign in"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      session.signIn(input.value);
      resolve();
    });
    fill(document.getElementById("login") ?? document.body.appendChild(el("section", { id: "login" })), form);
    document.getElementById("login").hidden = false;
    input.focus();
  });
}

function showAccount(me) {
  const admin = me.role === "admin";
  for (const link of document.querySelectorAll("[data-admin-only]")) link.hidden = !admin;
  const who = session.key()
    ? `${admin ? "Admin" : "Reader"}${me.key_id ? ` · ${me.key_id}` : ""}`
    : "Open access (no key needed on this server)";
  const account = document.getElementById("account");
  fill(account, el("span", { class: "who", "data-role": me.role }, who),
    session.key() && el("button", { type: "button", class: "link", onclick: signOut }, "Sign out"));
}

function signOut() {
  session.signOut();
  window.location.reload();
}

/** A person's sentence for any error (ApiError or not). */
export function describe(err) {
  return err instanceof ApiError ? err.describe() : `Something went wrong: ${err?.message ?? err}`;
}

/**
 * Show `err` in `node` as an alert. A 401 (the key was revoked or expired meanwhile) forgets the key and
 * offers to sign in again.
 */
export function showError(node, err) {
  const unauthorized = err instanceof ApiError && err.status === 401;
  if (unauthorized) session.signOut();
  fill(node, el("span", { role: "alert", class: "error" }, describe(err),
    unauthorized && " ", unauthorized && el("button", { type: "button", class: "link", onclick: signOut }, "Sign in again")));
  node.hidden = false;
}

/** The collections this key may read: [{name, documents, chunks, created_at}]. */
export async function readableCollections() {
  return (await call("/api/collections")).collections;
}

/**
 * Fill a <select> with collections ("name — N documents"), selecting the session's last choice (kept under the
 * sessionStorage key `remember`). Returns the list.
 */
export function fillCollectionSelect(select, collections, remember = "appliance.collection") {
  const previous = sessionStorage.getItem(remember) || select.value;
  fill(select, ...collections.map((c) => el("option", { value: c.name },
    `${c.name} — ${c.documents} document${c.documents === 1 ? "" : "s"}`)));
  if (collections.some((c) => c.name === previous)) select.value = previous;
  if (!select.dataset.remembered) {
    select.dataset.remembered = remember;
    select.addEventListener("change", () => sessionStorage.setItem(remember, select.value));
  }
  return collections;
}
