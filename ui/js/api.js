// The JSON API as the pages use it: the key of this browser session, authenticated requests, JSON errors
// turned into ApiError with a message a person can act on, the caller's identity, and the SSE frames of a
// streamed answer. No DOM here.

const KEY = "appliance.key";

/** The API key typed at sign-in, kept for this tab's session only (never in the URL, never in localStorage). */
export const session = {
  key: () => sessionStorage.getItem(KEY) || "",
  signIn: (key) => sessionStorage.setItem(KEY, key.trim()),
  signOut: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  /** status: HTTP status (0: no answer); type: the server's error type; retryAfter: seconds or null. */
  constructor(status, type, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.type = type;
    this.retryAfter = retryAfter;
  }

  /** A sentence that says what happened and what to do. */
  describe() {
    const wait = this.retryAfter ? ` Try again in ${this.retryAfter} s.` : " Try again shortly.";
    switch (this.status) {
      case 0: return "Cannot reach the server. Check that it is running, then try again.";
      case 401: return "Your API key was not accepted. Sign in with a valid key.";
      case 403: return `Your key is not allowed to do this: ${this.message}`;
      case 413: return `Too large: ${this.message}`;
      case 415: return `Unsupported file type: ${this.message}`;
      case 429: return `Too many requests for this key.${wait}`;
      case 503:
        return this.type === "overloaded"
          ? `The server is busy answering other questions.${wait}`
          : `The server is not ready yet (${this.message}).${wait}`;
      default: return this.message || `The server answered ${this.status}.`;
    }
  }
}

export function authHeaders() {
  const key = session.key();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** The ApiError of a failed response (its JSON error body when it has one). */
export async function errorOf(response) {
  let type = "http_error";
  let message = response.statusText;
  try {
    const body = await response.json();
    type = body.error?.type ?? type;
    message = body.error?.message ?? message;
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, type, message, response.headers.get("Retry-After"));
}

/** fetch with the session's key; resolves to the Response (any status), rejects with ApiError(0) offline. */
export async function request(path, { method = "GET", json, signal } = {}) {
  const headers = { ...authHeaders() };
  if (json !== undefined) headers["Content-Type"] = "application/json";
  try {
    return await fetch(path, { method, headers, signal, body: json === undefined ? undefined : JSON.stringify(json) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", String(err));
  }
}

/** The parsed JSON body of a successful request; rejects with ApiError otherwise. */
export async function call(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

/** Who the key belongs to: {key_id, role: "admin"|"reader", collections: list|null} (GET /api/me). Rejects with
 * ApiError (401 when the key is missing or wrong). */
export function whoami() {
  return call("/api/me");
}

/** The events of a text/event-stream body as {event, data} (data parsed as JSON). */
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}
