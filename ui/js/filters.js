// Metadata filters of a search or a question, read from a page's filter controls (#filter-tags: "key=value"
// pairs separated by commas; #filter-after: a date; #filter-types: content types) into the API's `filters`
// object: {tags: {k: v}, modified_after, content_type: [...]}; undefined when none is set.

import { ApiError } from "./api.js";
import { el, fill } from "./dom.js";

const $ = (id) => document.getElementById(id);

const CONTENT_TYPES = [["pdf", "PDF"], ["html", "HTML"], ["md", "Markdown"], ["txt", "Text"], ["docx", "Word"],
  ["pptx", "PowerPoint"], ["xlsx", "Excel"], ["csv", "CSV"], ["eml", "Email"], ["epub", "EPUB"], ["image", "Image"]];

/** Put the filter controls (tags, modified on or after, content types) into `node`, a page's placeholder. */
export function mountFilterControls(node) {
  const field = (...children) => el("div", { class: "field" }, ...children);
  fill(node,
    field(el("label", { for: "filter-tags" }, "Tags"),
      el("input", { id: "filter-tags", name: "filter_tags", type: "text", maxlength: "2000",
        placeholder: "team=hr, year=2024", "aria-describedby": "filter-tags-help" }),
      el("span", { id: "filter-tags-help", class: "help" }, "key=value, separated by commas; all must match")),
    field(el("label", { for: "filter-after" }, "Modified on or after"),
      el("input", { id: "filter-after", name: "filter_after", type: "date" })),
    field(el("label", { for: "filter-types" }, "Content types"),
      el("select", { id: "filter-types", name: "filter_types", multiple: true, size: "3" },
        ...CONTENT_TYPES.map(([value, label]) => el("option", { value }, label)))));
}

export function readFilters() {
  const filters = {};
  const tags = {};
  for (const part of $("filter-tags").value.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at <= 0) throw new ApiError(422, "invalid_request", `a tag filter is key=value, not "${part}"`);
    tags[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  if (Object.keys(tags).length) filters.tags = tags;
  if ($("filter-after").value) filters.modified_after = $("filter-after").value;
  const types = [...$("filter-types").selectedOptions].map((o) => o.value);
  if (types.length) filters.content_type = types;
  return Object.keys(filters).length ? filters : undefined;
}
