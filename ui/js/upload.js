// Uploads on the admin page: one job per drop (or file choice). The files go up as one multipart request
// (XMLHttpRequest, for its upload progress events), then GET /api/admin/jobs/{id} is polled until the job is
// done or failed. Each job has a card: a progress bar over both phases (upload 30%, ingestion 70%), a status
// line, and the fate of every file, errors included.

import { ApiError, authHeaders, call } from "./api.js";
import { el, fill } from "./dom.js";
import { describe } from "./page.js";

const UPLOAD_SHARE = 30;
const POLL_MS = 400;
const FILE_STATES = { pending: "waiting", done: "added", skipped: "unchanged (already there)",
  failed: "failed", expanded: "archive, unpacked" };

class JobCard {
  constructor(collection, files) {
    this.bar = el("progress", { max: 100, value: 0, "aria-label": `Progress of the upload to ${collection}` });
    this.status = el("p", { class: "status", role: "status" }, "Uploading…");
    this.files = el("ul", { class: "job-files" });
    const names = files.length === 1 ? files[0].name : `${files.length} files`;
    this.node = el("li", { class: "job card", "data-state": "uploading" },
      el("p", { class: "job-title" }, `${names} → ${collection}`), this.bar, this.status, this.files);
  }

  uploading(fraction) {
    this.bar.value = Math.round(UPLOAD_SHARE * fraction);
    fill(this.status, `Uploading… ${Math.round(100 * fraction)}%`);
  }

  update(job) {
    this.node.dataset.state = job.state;
    this.node.dataset.jobId = job.job_id;
    const fraction = job.total ? job.done / job.total : 0;
    this.bar.value = job.state === "done" || job.state === "failed" ? 100
      : UPLOAD_SHARE + Math.round((100 - UPLOAD_SHARE) * fraction);
    const count = (state) => job.files.filter((f) => f.state === state).length;
    const text = {
      queued: "Uploaded; waiting for the ingestion worker…",
      running: `Ingesting: ${job.done} of ${job.total} files`,
      done: `Done: ${count("done")} added, ${count("skipped")} unchanged, ${count("failed")} failed`,
      failed: `Failed: ${job.message ?? "see the files below"}`,
    }[job.state];
    fill(this.status, text);
    fill(this.files, ...job.files.map((f) => el("li", { class: `file ${f.state}` },
      el("span", { class: "file-name" }, f.file), ` — ${FILE_STATES[f.state] ?? f.state}`,
      f.state === "done" && ` (${f.chunks} chunk${f.chunks === 1 ? "" : "s"})`,
      f.error && el("span", { class: "error" }, `: ${f.error.replace(`${f.file}: `, "")}`))));
  }

  fail(err) {
    this.node.dataset.state = "failed";
    this.bar.value = 0;
    fill(this.status, el("span", { role: "alert", class: "error" }, describe(err)));
  }
}

function send(collection, files, card) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/admin/collections/${encodeURIComponent(collection)}/documents`);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) card.uploading(e.loaded / e.total); });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", "the upload did not reach the server")));
    xhr.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // not JSON: the status says enough
      }
      if (xhr.status === 202) resolve(body.job_id);
      else reject(new ApiError(xhr.status, body.error?.type ?? "http_error", body.error?.message ?? xhr.statusText,
        xhr.getResponseHeader("Retry-After")));
    });
    xhr.send(form);
  });
}

/**
 * Upload `files` into `collection` as one job, showing its card at the top of `list`; resolves once the job
 * has ended (or the upload failed), after calling `onEnd`.
 */
export async function uploadJob(collection, files, list, onEnd) {
  const card = new JobCard(collection, files);
  list.prepend(card.node);
  try {
    const jobId = await send(collection, files, card);
    for (;;) {
      let wait = POLL_MS;
      try {
        const job = await call(`/api/admin/jobs/${encodeURIComponent(jobId)}`);
        card.update(job);
        if (job.state === "done" || job.state === "failed") break;
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 429) throw err;
        wait = 1000 * (Number(err.retryAfter) || 1); // over the key's rate limit: poll more slowly
      }
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  } catch (err) {
    card.fail(err);
  }
  await onEnd();
}
