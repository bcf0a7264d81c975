// The lmrec console: pick a user, see their history and recommendations with the reasons, act on an item and
// watch the ranking move. Every number on screen comes from the service's answers; the event -> updated
// ranking time is measured here (performance.now around the POST of the event and the next recommendation).

import { ApiError, api, token } from "./api.js";
import {
  ago, bodyOf, chipsOf, compareRankings, formatCount, median, ms, parseAttributes, titleOf, verbOf,
} from "./moves.js";

const HISTORY_LIMIT = 200; // the service keeps 200 events per user for ranking and explanations (max_history)
const USERS_PAGE = 20;
const PLACEMENT_K = 100; // the API's largest k: where a new item lands is looked up in this many
const RELATED_K = 5;
const HEALTH_EVERY_MS = 15000;
const RANDOM_PAGES = 10; // pages of 100 users read (once) to draw "Random user" from

const $ = (id) => document.getElementById(id);

const state = {
  user: null,
  k: 10,
  ranking: null, // item ids as shown, best first (what the next answer is compared with)
  scores: new Map(), // item id -> score as shown
  titles: new Map(), // item id -> {title, text, attributes}, from every answer seen (explanations name items)
  history: [],
  removed: new Set(), // items removed from the catalog in this tab (a reason for leaving the list)
  timings: [], // event -> updated ranking, ms
  usersCursor: null,
  usersSeq: 0,
  historySeq: 0,
  pool: null, // user ids for "Random user"
  deleted: new Set(), // users deleted in this tab
  busy: false,
};

// ------------------------------------------------------------------------------------------- small helpers

/** h("li", {class: "x", dataset: {id}}, child, ...): an element; strings become text (never HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const plural = (n, word) => `${formatCount(n)} ${word}${n === 1 ? "" : "s"}`;
const srOnly = (text) => h("span", { class: "sr-only" }, text);

function remember(item) {
  if (!item?.item_id) return;
  const known = state.titles.get(item.item_id);
  const text = item.text ?? known?.text;
  const attributes = item.attributes ?? known?.attributes;
  state.titles.set(item.item_id, { text, attributes, title: titleOf(item.item_id, text, attributes) });
}

const nameOf = (id) => state.titles.get(id)?.title ?? id;

let toastTimer = null;
function toast(message, kind = "error") {
  const el = $("toast");
  el.replaceChildren(h("span", {}, message), h("button", { type: "button", class: "btn ghost small", onclick: () => (el.hidden = true) }, "Dismiss"));
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 8000);
}

function failed(error, what) {
  if (error instanceof ApiError && error.status === 401) {
    openToken(`${what} was refused: ${error.message}. Enter the service's API token.`);
    return;
  }
  const detail = error instanceof ApiError ? error.message : String(error?.message || error);
  toast(`${what} failed: ${detail}`);
}

function needToken(what) {
  if (token.get()) return true;
  openToken(`${what} needs the service's API token.`);
  return false;
}

// ------------------------------------------------------------------------------------------- token dialog

function renderTokenButton() {
  const set = Boolean(token.get());
  const button = $("token-button");
  button.textContent = set ? "API token set" : "Set API token";
  button.dataset.set = set;
}

let tokenWhy = "";
function openToken(reason = "") {
  const dialog = $("token-dialog");
  tokenWhy ||= $("token-why").textContent;
  $("token-why").textContent = reason ? `${reason} ${tokenWhy}` : tokenWhy;
  $("token-input").value = token.get();
  if (!dialog.open) dialog.showModal(); // two refusals at once open it once
  $("token-input").focus();
}

function wireToken() {
  renderTokenButton();
  $("token-button").addEventListener("click", () => openToken());
  $("token-form").addEventListener("submit", () => {
    token.set($("token-input").value.trim());
    renderTokenButton();
    searchUsers(); // a service that guards reads too answers now
  });
  $("token-cancel").addEventListener("click", () => $("token-dialog").close());
  $("token-forget").addEventListener("click", () => {
    token.set("");
    renderTokenButton();
    $("token-dialog").close();
  });
}

function confirmAction(title, text, ok) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

// ------------------------------------------------------------------------------------------------- health

function stagesOf(body) {
  // {name: "ok"} or {name: {status, ...}} or [{name|stage, status}]
  const raw = body?.stages;
  if (!raw) return [];
  const entries = Array.isArray(raw) ? raw.map((s) => [s.name ?? s.stage ?? "?", s]) : Object.entries(raw);
  return entries.map(([name, s]) => {
    const status = typeof s === "string" ? s : (s?.status ?? (s?.ok === false ? "failing" : "ok"));
    return { name, status: String(status), message: typeof s === "object" ? (s?.message ?? "") : "" };
  });
}

const healthState = (status) => (/^(ok|healthy|ready|running)$/i.test(status) ? "ok" : /degraded|slow|starting/i.test(status) ? "warn" : "bad");

async function refreshHealth() {
  const group = $("health");
  try {
    const body = await api.health();
    const store = body.store || {};
    $("model-version").textContent = body.model_version || "–";
    $("model-version").title = body.model_version || "";
    $("count-users").textContent = formatCount(store.users);
    $("count-events").textContent = formatCount(store.events);
    $("count-items").textContent = formatCount(store.items);
    const overall = healthState(body.status || "ok");
    const stages = stagesOf(body);
    group.replaceChildren(
      h("span", { class: "dot", dataset: { state: overall } }),
      h("span", { id: "health-text" }, body.status === "ok" ? "Healthy" : body.status),
      ...stages.map((s) => h("span", { class: "stage", dataset: { state: healthState(s.status) }, title: s.message || s.status },
        h("span", { class: "dot small", dataset: { state: healthState(s.status) } }), s.name, srOnly(`: ${s.status}`))),
    );
  } catch (error) {
    const fields = error instanceof ApiError ? error.fields.map((f) => f.field).join(", ") : "";
    group.replaceChildren(
      h("span", { class: "dot", dataset: { state: "bad" } }),
      h("span", { id: "health-text" }, error.status === 0 ? "Unreachable" : `Not ready${fields ? `: ${fields}` : ""}`),
    );
  }
}

// -------------------------------------------------------------------------------------------------- users

function renderUserOptions(users, append) {
  const list = $("user-results");
  if (!append) list.replaceChildren();
  for (const u of users) {
    list.append(h("li", {}, h("button", {
      type: "button", class: "user-option", dataset: { id: u.user_id }, "aria-current": u.user_id === state.user ? "true" : null,
      onclick: () => selectUser(u.user_id),
    }, h("span", { class: "uid" }, u.user_id), h("span", { class: "muted" }, plural(u.events, "event")))));
  }
}

async function searchUsers(append = false) {
  const prefix = $("user-prefix").value.trim();
  const seq = ++state.usersSeq;
  const note = $("user-results-note");
  try {
    const page = await api.users(prefix, USERS_PAGE, append ? state.usersCursor : undefined);
    if (seq !== state.usersSeq) return; // a later search answered first
    state.usersCursor = page.next_cursor ?? null;
    renderUserOptions(page.users || [], append);
    $("more-users").hidden = !state.usersCursor;
    const exact = (page.users || []).some((u) => u.user_id === prefix);
    note.hidden = true;
    if (!append && prefix && !exact) {
      $("user-results").append(h("li", {}, h("button", {
        type: "button", class: "user-option new", onclick: () => selectUser(prefix),
      }, h("span", { class: "uid" }, `Start “${prefix}”`), h("span", { class: "muted" }, "new user, no history"))));
    }
    if (!append && !(page.users || []).length && !prefix) {
      note.textContent = "The store holds no users yet. Type an id to start one.";
      note.hidden = false;
    }
  } catch (error) {
    if (seq !== state.usersSeq) return;
    $("user-results").replaceChildren();
    $("more-users").hidden = true;
    note.textContent = error.status === 404
      ? "This service does not list users: type an id and press Enter."
      : error.status === 401 ? "This service needs the API token for reads too: set it in the top bar."
        : `Users could not be listed: ${error.message}`;
    note.hidden = false;
  }
}

/** Users with a history to draw a random one from: the first RANDOM_PAGES pages, read once per visit. */
async function userPool() {
  if (state.pool) return state.pool;
  const pool = [];
  let cursor;
  let pages = 0;
  do {
    const page = await api.users("", 100, cursor);
    pool.push(...(page.users || []).filter((u) => u.events > 0).map((u) => u.user_id));
    cursor = page.next_cursor;
  } while (cursor && ++pages < RANDOM_PAGES);
  state.pool = pool;
  return pool;
}

async function randomUser() {
  try {
    const pool = (await userPool()).filter((u) => u !== state.user && !state.deleted.has(u));
    if (!pool.length) return toast("The store holds no other user with a history.", "info");
    await selectUser(pool[Math.floor(Math.random() * pool.length)]);
  } catch (error) {
    failed(error, "Listing users");
  }
}

async function selectUser(userId) {
  state.user = userId;
  state.ranking = null;
  window.history.replaceState(null, "", `#user=${encodeURIComponent(userId)}`);
  for (const b of document.querySelectorAll(".user-option")) {
    if (b.dataset.id === userId) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
  }
  $("user-card").hidden = false;
  $("user-id").textContent = userId;
  $("refresh").disabled = false;
  $("timing").replaceChildren();
  $("gone").hidden = true;
  $("recs-sub").textContent = `Loading ${userId}…`;
  $("recs").setAttribute("aria-busy", "true");
  try {
    const [hist, answer] = await Promise.all([api.history(userId, HISTORY_LIMIT), api.recommend(userId, state.k)]);
    if (state.user !== userId) return;
    showHistory(hist);
    showRecs(answer);
  } catch (error) {
    $("recs-sub").textContent = `${userId} could not be loaded.`;
    failed(error, `Loading ${userId}`);
  } finally {
    $("recs").setAttribute("aria-busy", String(state.busy));
  }
}

async function deleteUser() {
  const userId = state.user;
  if (!userId || !needToken("Deleting a user")) return;
  const sure = await confirmAction(`Delete ${userId}?`,
    "Their whole history is deleted from the store; their recommendations start again from cold.", "Delete user");
  if (!sure) return;
  try {
    const out = await api.deleteUser(userId);
    state.deleted.add(userId);
    toast(out.deleted ? `${userId} was deleted with their history.` : `${userId} had nothing stored.`, "info");
    await Promise.all([reloadUser(), searchUsers(), refreshHealth()]);
  } catch (error) {
    failed(error, `Deleting ${userId}`);
  }
}

// ------------------------------------------------------------------------------------------------ history

async function reloadHistory() {
  if (!state.user) return;
  const userId = state.user;
  const seq = ++state.historySeq;
  try {
    const hist = await api.history(userId, HISTORY_LIMIT);
    if (state.user === userId && seq === state.historySeq) showHistory(hist); // the latest read wins
  } catch (error) {
    failed(error, "Loading the history");
  }
}

function showHistory(answer) {
  const events = answer.events || [];
  events.forEach((e) => remember(e));
  state.history = events;
  $("history-count").textContent = events.length ? `· ${events.length}${events.length >= HISTORY_LIMIT ? "+" : ""}` : "";
  const list = $("history");
  if (!events.length) {
    list.replaceChildren(h("li", { class: "empty-row" }, "No events yet: recommendations are not personalised (cold start)."));
    return;
  }
  const now = Date.now() / 1000;
  list.replaceChildren(...[...events].reverse().map((e) => h("li", { class: "event", dataset: { type: e.event_type, id: e.item_id } },
    h("span", { class: "event-type", dataset: { type: e.event_type } }, verbOf(e.event_type)),
    h("span", { class: "event-item" }, nameOf(e.item_id)),
    h("time", { class: "muted", datetime: new Date(e.timestamp * 1000).toISOString() }, ago(e.timestamp, now)),
  )));
}

// -------------------------------------------------------------------------------------------- recommendations

async function reloadUser() {
  if (state.user) await selectUser(state.user);
}

async function refreshRecs(cause) {
  if (!state.user) return;
  try {
    showRecs(await api.recommend(state.user, state.k), cause);
  } catch (error) {
    failed(error, "Recommending");
  }
}

function moveBadge(move) {
  if (!move || move.kind === "same") return h("span", { class: "move", dataset: { kind: "same" } }, h("span", { "aria-hidden": "true" }, "–"), srOnly("unchanged"));
  if (move.kind === "new") return h("span", { class: "move", dataset: { kind: "new" } }, "new");
  const arrow = move.kind === "up" ? "▲" : "▼";
  return h("span", { class: "move", dataset: { kind: move.kind } },
    h("span", { "aria-hidden": "true" }, `${arrow} ${move.by}`), srOnly(`${move.kind} ${move.by}`));
}

/** A share drawn as a bar (set through the CSSOM: no inline style, so a strict Content-Security-Policy holds). */
function bar(percent) {
  const el = h("span", { class: "bar", "aria-hidden": "true" });
  el.style.setProperty("--w", `${Math.round(percent)}%`);
  return el;
}

function explanationOf(item) {
  const ex = item.explanation;
  if (!ex) return null;
  const events = ex.events || [];
  const top = Math.max(1e-9, ...events.map((e) => Math.abs(e.contribution ?? 0)));
  return h("div", { class: "why" },
    h("span", { class: "reason" }, `${ex.reason}${events.length ? ":" : ""}`),
    events.length ? h("ul", { class: "because", "aria-label": `What drove ${nameOf(item.item_id)}` },
      events.map((e) => h("li", { title: `contribution ${(e.contribution ?? 0).toFixed(3)}` },
        h("span", { class: "verb" },
          bar((100 * Math.abs(e.contribution ?? 0)) / top),
          `${verbOf(e.event_type)} `),
        h("strong", {}, nameOf(e.item_id)),
        h("span", { class: "num muted" }, `\u00a0${(e.contribution ?? 0).toFixed(2)}`), // kept beside the title
      ))) : null,
  );
}

function scoreDelta(id, score) {
  const before = state.scores.get(id);
  if (before === undefined) return null;
  const d = score - before;
  if (Math.abs(d) < 0.0005) return null;
  return h("span", { class: "delta num", dataset: { sign: d > 0 ? "up" : "down" } }, `${d > 0 ? "+" : "−"}${Math.abs(d).toFixed(3)}`);
}

function recRow(item, rank, move, recommendationId = null) {
  const cite = { recommendation_id: recommendationId, position: rank - 1 }; // the slot the user acted on
  const meta = state.titles.get(item.item_id) || {};
  const title = meta.title || item.item_id;
  const body = bodyOf(meta.text, title);
  const chips = chipsOf(meta.attributes);
  const explored = item.explored === true;
  return h("li", { class: "rec", dataset: { id: item.item_id, move: move?.kind || "same" } },
    h("div", { class: "rank-col" }, h("span", { class: "rank" }, rank), moveBadge(move)),
    h("div", { class: "rec-body" },
      h("h3", { class: "rec-title" }, title),
      h("p", { class: "rec-meta" },
        h("span", { class: "item-id" }, item.item_id),
        chips.map((c) => h("span", { class: "chip", title: c.key }, c.value)),
        explored ? h("span", { class: "chip explored", title: "this slot was filled by the exploration policy" },
          `explored${typeof item.propensity === "number" ? ` · p ${item.propensity.toFixed(2)}` : ""}`) : null,
      ),
      body ? h("p", { class: "rec-text" }, body) : null,
      explanationOf(item),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "btn small", dataset: { act: "click" }, onclick: () => act(item.item_id, "click", cite) }, "Click", srOnly(` ${title}`)),
        h("button", { type: "button", class: "btn small", dataset: { act: "purchase" }, onclick: () => act(item.item_id, "purchase", cite) }, "Buy", srOnly(` ${title}`)),
        h("button", { type: "button", class: "btn ghost small subtle", dataset: { act: "remove" }, onclick: () => removeItem(item.item_id) }, "Remove", srOnly(` ${title} from the catalog`)),
      ),
    ),
    h("div", { class: "rec-side" },
      h("p", { class: "score" }, h("span", { class: "muted" }, "score "), h("span", { class: "num" }, item.score.toFixed(3)),
        move && move.kind !== "new" ? scoreDelta(item.item_id, item.score) : null),
    ),
  );
}

function goneReason(id, cause) {
  if (state.removed.has(id)) return "removed from the catalog";
  if (cause?.itemId === id && cause.eventType) return `${verbOf(cause.eventType)}: now in the history`;
  if (state.history.some((e) => e.item_id === id)) return "now in the history";
  return `below the top ${state.k}`;
}

/** Render an answer; with a cause (an event, a removal, a new item) mark each item's move since the last one. */
function showRecs(answer, cause = null) {
  (answer.items || []).forEach((item) => remember(item));
  const ids = (answer.items || []).map((i) => i.item_id);
  const { moves, gone } = compareRankings(cause ? state.ranking : null, ids);
  if (!cause) state.scores = new Map();

  const list = $("recs");
  const before = new Map([...list.children].map((li) => [li.dataset.id, li.getBoundingClientRect().top]));
  const focused = document.activeElement?.closest?.(".rec");
  const focusAct = focused ? document.activeElement.dataset.act : null;
  const focusIndex = focused ? [...list.children].indexOf(focused) : -1;

  list.replaceChildren(...(answer.items || []).map((item, i) => recRow(item, i + 1, moves.get(item.item_id), answer.recommendation_id)));
  state.ranking = ids;
  state.scores = new Map((answer.items || []).map((i) => [i.item_id, i.score]));
  list.dataset.version = String((Number(list.dataset.version) || 0) + 1);
  animateMoves(list, before);

  $("recs-empty").hidden = ids.length > 0;
  if (!ids.length) {
    $("recs-empty").replaceChildren(h("p", {}, "Nothing to recommend."),
      h("p", { class: "muted" }, "Every item is in this user's history, removed, or filtered out."));
  }
  const personal = answer.cold_start ? "cold start: no history yet, ranked by popularity" : "personalised from the history";
  $("recs-sub").replaceChildren(
    "For ", h("strong", {}, answer.user_id), ` · ${personal}`,
    answer.history_version !== undefined ? ` · history v${answer.history_version}` : "",
    answer.policy ? ` · ${answer.policy} policy` : "",
    answer.variant ? ` · experiment variant ${answer.variant}` : "",
  );
  $("recs-sub").title = [answer.model_version && `model ${answer.model_version}`, answer.recommendation_id && `recommendation ${answer.recommendation_id}`]
    .filter(Boolean).join(" · ");

  const goneBox = $("gone");
  goneBox.hidden = !gone.length;
  $("gone-list").replaceChildren(...gone.map(({ id, from }) => h("li", { dataset: { id } },
    h("span", { class: "move", dataset: { kind: "gone" } }, "gone"),
    h("span", { class: "gone-title" }, nameOf(id)),
    h("span", { class: "muted" }, ` was #${from + 1} · ${goneReason(id, cause)}`),
  )));

  if (focusIndex >= 0) { // keep the keyboard where it was: the same action on the row now at that place
    const row = list.children[Math.min(focusIndex, list.children.length - 1)];
    (row?.querySelector(`[data-act="${focusAct}"]`) || $("recommendations")).focus();
  }
}

function animateMoves(list, before) {
  if (!before.size || matchMedia("(prefers-reduced-motion: reduce)").matches) return;
  for (const li of list.children) {
    const top = before.get(li.dataset.id);
    if (top === undefined) {
      li.animate([{ opacity: 0, transform: "translateY(6px)" }, { opacity: 1, transform: "none" }], { duration: 260, easing: "ease-out" });
      continue;
    }
    const dy = top - li.getBoundingClientRect().top;
    if (Math.abs(dy) > 1) li.animate([{ transform: `translateY(${dy}px)` }, { transform: "none" }], { duration: 320, easing: "cubic-bezier(.2,.7,.2,1)" });
  }
}

/** The time from sending a write to holding the ranking that reflects it; events make the running median. */
function showTiming(label, parts, isEvent) {
  const total = parts.reduce((sum, p) => sum + p.ms, 0);
  if (isEvent) state.timings.push(total);
  const el = $("timing");
  el.dataset.totalMs = total.toFixed(1);
  const many = isEvent && state.timings.length > 1;
  el.replaceChildren(
    h("span", { class: "timing-main" }, label, " → new ranking in ", h("strong", { class: "num" }, `${ms(total)} ms`)),
    h("span", { class: "muted" }, ` (${parts.map((p) => `${p.name} ${ms(p.ms)} ms`).join(" + ")}`,
      many ? `; median of ${state.timings.length} events: ${ms(median(state.timings))} ms)` : ")"),
  );
}

function setBusy(busy) {
  // buttons stay enabled (disabling the focused one would drop the keyboard focus); state.busy refuses a
  // second action while one is in flight
  state.busy = busy;
  $("recs").setAttribute("aria-busy", String(busy));
}

/** Post the event (citing the answer and slot it was shown in), then ask for the ranking again: the time
 * between is what the user waits for. */
async function act(itemId, eventType, cite = null) {
  if (state.busy || !state.user || !needToken(eventType === "purchase" ? "Buying" : "Clicking")) return;
  const userId = state.user;
  setBusy(true);
  try {
    const t0 = performance.now();
    await api.event(userId, itemId, eventType, cite);
    const t1 = performance.now();
    const answer = await api.recommend(userId, state.k);
    const t2 = performance.now();
    if (state.user !== userId) return;
    showRecs(answer, { itemId, eventType });
    showTiming(`${eventType === "purchase" ? "Bought" : "Clicked"} “${nameOf(itemId)}”`, [
      { name: "event", ms: t1 - t0 }, { name: "recommend", ms: t2 - t1 },
    ], true);
  } catch (error) {
    failed(error, eventType === "purchase" ? "Buying" : "Clicking");
    return;
  } finally {
    setBusy(false); // the next action may start: the rest of the page catches up meanwhile
  }
  await Promise.all([reloadHistory(), refreshHealth(), searchUsers()]);
}

async function removeItem(itemId) {
  if (state.busy || !needToken("Removing an item")) return;
  const sure = await confirmAction(`Remove “${nameOf(itemId)}”?`,
    `${itemId} stops being recommended to anyone from the next request on. Posting it again brings it back.`, "Remove item");
  if (!sure) return;
  setBusy(true);
  try {
    const t0 = performance.now();
    await api.removeItem(itemId);
    const t1 = performance.now();
    state.removed.add(itemId);
    const answer = state.user ? await api.recommend(state.user, state.k) : null;
    const t2 = performance.now();
    if (answer) {
      showRecs(answer, { removedId: itemId });
      showTiming(`Removed “${nameOf(itemId)}”`, [{ name: "remove", ms: t1 - t0 }, { name: "recommend", ms: t2 - t1 }], false);
    }
    await refreshHealth();
  } catch (error) {
    failed(error, "Removing the item");
  } finally {
    setBusy(false);
  }
}

// ---------------------------------------------------------------------------------------------- new items

const newItemId = () => `item-${Math.random().toString(36).slice(2, 8)}`;

function fieldError(id, message) {
  $(`${id}-error`).textContent = message || "";
  const input = $(id);
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

async function addItem(event) {
  event.preventDefault();
  const itemId = $("item-id").value.trim();
  const text = $("item-text").value.trim();
  let attributes = {};
  fieldError("item-id", itemId ? "" : "An item id is needed.");
  fieldError("item-text", text ? "" : "The text is what the model reads: write at least a title.");
  try {
    attributes = parseAttributes($("item-attrs").value);
    fieldError("item-attrs", "");
  } catch (error) {
    fieldError("item-attrs", error.message);
    return;
  }
  if (!itemId || !text) return ($(!itemId ? "item-id" : "item-text")).focus();
  if (!needToken("Adding an item")) return;

  const button = $("add-item");
  button.disabled = true;
  try {
    const t0 = performance.now();
    await api.putItem(itemId, text, attributes);
    remember({ item_id: itemId, text, attributes });
    state.removed.delete(itemId);
    const userId = state.user;
    const [wide, related] = await Promise.all([userId ? api.recommend(userId, PLACEMENT_K) : null, api.related(itemId, RELATED_K)]);
    const t1 = performance.now();
    if (wide && !wide.items.some((i) => i.item_id === itemId)) { // below the top 100: its own score, and the last one's
      const alone = await api.scoreOf(userId, itemId);
      wide.below = { score: alone.items[0]?.score, last: wide.items.at(-1)?.score };
    }
    (related.items || []).forEach((i) => remember(i));
    showPlacement(itemId, userId, wide, related, t1 - t0);
    $("item-id").value = newItemId();
    $("item-text").value = "";
    $("item-attrs").value = "";
    await Promise.all([refreshRecs({ addedId: itemId }), refreshHealth()]);
  } catch (error) {
    if (error instanceof ApiError && error.fields.length) {
      for (const f of error.fields) {
        if (f.field === "text") fieldError("item-text", f.message);
        else if (f.field === "item_id") fieldError("item-id", f.message);
        else if (f.field.startsWith("attributes")) fieldError("item-attrs", `${f.field}: ${f.message}`);
      }
    }
    failed(error, "Adding the item");
  } finally {
    button.disabled = false;
  }
}

function showPlacement(itemId, userId, wide, related, elapsed) {
  const title = nameOf(itemId);
  const box = $("placement");
  let where;
  if (!userId) where = h("p", {}, "Pick a user to see where it lands for them.");
  else {
    const at = (wide?.items || []).findIndex((i) => i.item_id === itemId);
    where = at >= 0
      ? h("p", { class: "lands" }, h("strong", { class: "big num" }, `#${at + 1}`), ` for ${userId}`,
        h("span", { class: "muted" }, at < state.k ? ` · in the top ${state.k} shown` : ` · of their top ${PLACEMENT_K}`))
      : h("p", { class: "lands" }, `Below ${userId}'s top ${PLACEMENT_K}`,
        typeof wide.below?.score === "number" ? h("span", { class: "muted" },
          ` · score ${wide.below.score.toFixed(3)}, #${PLACEMENT_K} has ${wide.below.last.toFixed(3)}`) : null);
  }
  const items = related.items || [];
  box.replaceChildren(
    h("h3", {}, `“${title}” is live`),
    h("p", { class: "muted" }, `Posted and ranked in ${ms(elapsed)} ms, with no retraining.`),
    where,
    h("h4", { id: "related-title" }, "Related items"),
    items.length
      ? h("ol", { class: "related", "aria-labelledby": "related-title" }, items.map((i) => h("li", {},
        h("span", {}, nameOf(i.item_id)), h("span", { class: "num muted" }, i.score.toFixed(3)))))
      : h("p", { class: "muted" }, "No related items."),
  );
  box.dataset.item = itemId;
  box.hidden = false;
}

// ------------------------------------------------------------------------------------------------- wiring

function debounce(fn, wait) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}

function start() {
  wireToken();
  $("item-id").value = newItemId();
  const search = debounce(() => searchUsers(false), 180);
  $("user-prefix").addEventListener("input", search);
  $("user-search").addEventListener("submit", (e) => {
    e.preventDefault();
    const typed = $("user-prefix").value.trim();
    if (typed) selectUser(typed);
  });
  $("more-users").addEventListener("click", () => searchUsers(true));
  $("random-user").addEventListener("click", randomUser);
  $("delete-user").addEventListener("click", deleteUser);
  $("refresh").addEventListener("click", () => refreshRecs({ refresh: true }));
  $("k").addEventListener("change", () => {
    state.k = Number($("k").value);
    state.ranking = null;
    refreshRecs();
  });
  $("item-form").addEventListener("submit", addItem);

  refreshHealth();
  setInterval(() => document.visibilityState === "visible" && refreshHealth(), HEALTH_EVERY_MS);
  searchUsers(false);
  const wanted = new URLSearchParams(location.hash.slice(1)).get("user");
  if (wanted) selectUser(wanted);
}

start();
