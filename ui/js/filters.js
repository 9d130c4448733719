// Metadata filters of a search or a question, read from a page's filter controls (#filter-tags: "key=value"
// pairs separated by commas; #filter-after: a date; #filter-types: content types) into the API's `filters`
// object: {tags: {k: v}, modified_after, content_type: [...]}; undefined when none is set.

import { ApiError } from "./api.js";

const $ = (id) => document.getElementById(id);

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
