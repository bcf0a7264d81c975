// The lmrec HTTP API as the console uses it. Same origin only: the page is served at <root>/ui/ and the API
// lives at <root>/ (so a service mounted under a route prefix works unchanged). The bearer token is kept in
// session storage (this tab only) and sent in the Authorization header, never in a URL.

const TOKEN_KEY = "lmrec.console.token";
// item metadata in answers: the console shows titles and text, not bare ids
const FIELDS = ["text", "attributes"];

export const ROOT = new URL("../", new URL(".", location.href));

export class ApiError extends Error {
  /** An answer other than 2xx, with the API's {"error": {code, message, fields}} when it sent one. */
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || `http_${status}`;
    this.fields = Array.isArray(error?.fields) ? error.fields : [];
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (value) => (value ? sessionStorage.setItem(TOKEN_KEY, value) : sessionStorage.removeItem(TOKEN_KEY)),
};

async function call(method, path, { body, query } = {}) {
  const url = new URL(path, ROOT);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const secret = token.get();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { code: "unreachable", message: "the service did not answer (is it running?)" });
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.error);
  return data;
}

const seg = encodeURIComponent;

export const api = {
  health: () => call("GET", "healthz"),
  /** {users: [{user_id, events}], next_cursor} */
  users: (prefix, limit, cursor) => call("GET", "v1/users", { query: { prefix, limit, cursor } }),
  recommend: (userId, k) =>
    call("POST", "v1/recommend", { body: { user_id: userId, k, explain: true, fields: FIELDS } }),
  /** one item's score for the user (``allow``: only it is ranked) */
  scoreOf: (userId, itemId) => call("POST", "v1/recommend", { body: { user_id: userId, k: 1, allow: [itemId] } }),
  related: (itemId, k) => call("POST", "v1/related", { body: { item_id: itemId, k, fields: FIELDS } }),
  /** oldest first, each event with its item's text */
  history: (userId, limit) => call("GET", `v1/users/${seg(userId)}/history`, { query: { limit, fields: "text" } }),
  /** cite: {recommendation_id, position} of the answer the item was shown in (attributes the event to it) */
  event: (userId, itemId, eventType, cite = null) =>
    call("POST", "v1/events", { body: { user_id: userId, item_id: itemId, event_type: eventType,
      ...(cite?.recommendation_id ? { recommendation_id: cite.recommendation_id, position: cite.position } : {}) } }),
  putItem: (itemId, text, attributes) => call("PUT", `v1/items/${seg(itemId)}`, { body: { text, attributes } }),
  removeItem: (itemId) => call("DELETE", `v1/items/${seg(itemId)}`),
  deleteUser: (userId) => call("DELETE", `v1/users/${seg(userId)}`),
};
