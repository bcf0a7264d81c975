// Pure helpers: how a ranking moved between two answers, and how an item is named on screen.

/**
 * Compare two rankings (lists of item ids, best first).
 * Returns {moves: Map(id -> {kind, from, to, by}), gone: [{id, from}]} where kind is "new" (not in the
 * previous list), "up" / "down" (by places) or "same"; gone lists what was before and is not now.
 * With no previous ranking (a first load) nothing is marked.
 */
export function compareRankings(before, after) {
  const moves = new Map();
  if (!before) {
    after.forEach((id, i) => moves.set(id, { kind: "same", from: i, to: i, by: 0 }));
    return { moves, gone: [] };
  }
  const was = new Map(before.map((id, i) => [id, i]));
  after.forEach((id, to) => {
    const from = was.get(id);
    if (from === undefined) moves.set(id, { kind: "new", from: null, to, by: 0 });
    else if (from > to) moves.set(id, { kind: "up", from, to, by: from - to });
    else if (from < to) moves.set(id, { kind: "down", from, to, by: to - from });
    else moves.set(id, { kind: "same", from, to, by: 0 });
  });
  const now = new Set(after);
  const gone = before.map((id, from) => ({ id, from })).filter(({ id }) => !now.has(id));
  return { moves, gone };
}

/** The item's title: its "title" attribute, else the first sentence of its text, else its id. */
export function titleOf(id, text, attributes) {
  const named = attributes?.title ?? attributes?.name;
  if (typeof named === "string" && named.trim()) return named.trim();
  if (typeof text === "string" && text.trim()) {
    const first = text.trim().split(/(?<=[.!?])\s+|\n/)[0].replace(/[.]$/, "");
    return first.length > 90 ? `${first.slice(0, 87).trimEnd()}…` : first;
  }
  return id;
}

/** The text after the title (what the title already says is not repeated). */
export function bodyOf(text, title) {
  if (typeof text !== "string") return "";
  const t = text.trim();
  return t.startsWith(title) ? t.slice(title.length).replace(/^[.!?]?\s*/, "") : t;
}

/** Attribute values shown as chips (title-like keys are already the heading). */
export function chipsOf(attributes) {
  return Object.entries(attributes || {})
    .filter(([key, value]) => !["title", "name"].includes(key) && value !== null && value !== "")
    .slice(0, 6)
    .map(([key, value]) => ({ key, value: typeof value === "string" ? value : `${key} ${value}` }));
}

/** "key=value" lines -> attributes, numbers and booleans typed; throws with the line at fault. */
export function parseAttributes(source) {
  const out = {};
  source.split("\n").forEach((raw, n) => {
    const line = raw.trim();
    if (!line) return;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`line ${n + 1}: write key=value`);
    const key = line.slice(0, eq).trim();
    const text = line.slice(eq + 1).trim();
    let value = text;
    if (/^(true|false)$/i.test(text)) value = text.toLowerCase() === "true";
    else if (text !== "" && Number.isFinite(Number(text))) value = Number(text);
    out[key] = value;
  });
  return out;
}

const EVENT_VERBS = { view: "viewed", click: "clicked", purchase: "bought", rating: "rated" };
export const verbOf = (eventType) => EVENT_VERBS[eventType] || eventType;

/** "just now", "5 min ago", "3 h ago", else a date. */
export function ago(seconds, now = Date.now() / 1000) {
  const d = Math.max(0, now - seconds);
  if (d < 45) return "just now";
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export const formatCount = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");
export const ms = (x) => (x < 10 ? x.toFixed(1) : Math.round(x).toString());

export function median(values) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
