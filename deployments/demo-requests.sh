#!/usr/bin/env bash
# A tour of the API against a running service (`make demo`, or `lmrec serve`), from another terminal. Run it as
# often as you like: it works on a user of its own (tour-user) and an item of its own (tour-vest), both removed
# first and its events carry fixed times, so every run prints the same answers (but for each answer's own
# recommendation_id, and the store's counters: history_version, item_version, /healthz's counts).
#   LMREC_URL          the service (default http://127.0.0.1:8000)
#   LMREC_API_TOKEN    the bearer token writes need (default demo-token: what `make demo` serves with)
#   LMREC_TOUR_ITEMS   three catalog item ids for the tour user's history (default: the demo catalog's)
set -euo pipefail
URL=${LMREC_URL:-http://127.0.0.1:8000}
AUTH="Authorization: Bearer ${LMREC_API_TOKEN:-demo-token}"
JSON="Content-Type: application/json"
read -r A B C <<< "${LMREC_TOUR_ITEMS:-i0001 i0002 i0003}"
U=tour-user

say() { printf '\n# %s\n' "$*"; }
call() {  # METHOD PATH [BODY] [auth]: prints the request and the answer
  local method=$1 path=$2 body=${3:-} auth=${4:-}
  printf '%s %s %s\n' "$method" "$path" "$body"
  local args=(-s -X "$method" "$URL$path")
  [ -n "$body" ] && args+=(-H "$JSON" -d "$body")
  [ -n "$auth" ] && args+=(-H "$AUTH")
  curl "${args[@]}"; echo
}
event() { printf '{"user_id": "%s", "item_id": "%s", "event_type": "%s", "timestamp": %s}' "$U" "$1" "$2" "$3"; }

say "start clean: the tour's user and item from an earlier run are removed (writes need the bearer token)"
status=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$URL/v1/users/$U" -H "$AUTH") || {
  echo "no service answers at $URL (start one: make demo, or lmrec serve --artifact DIR)"; exit 1; }
if [ "$status" != 200 ]; then
  echo "DELETE /v1/users/$U answered $status: set LMREC_API_TOKEN to the token the service was started with"; exit 1
fi
curl -s -o /dev/null -X DELETE "$URL/v1/items/tour-vest" -H "$AUTH"   # 404 the first time
call GET /healthz

say "a user without history gets the cold-start answer (popular items)"
call POST /v1/recommend "{\"user_id\": \"$U\", \"k\": 3}"

say "three events (202 once durable); the very next recommendation is personal, with explanations"
call POST /v1/events "{\"events\": [$(event "$A" view 1717200000), $(event "$B" click 1717200060), $(event "$C" purchase 1717200120)]}" auth
call POST /v1/recommend "{\"user_id\": \"$U\", \"k\": 3, \"explain\": true}"

say "a new item, encoded from its text by the LM: recommendable at once, here through a filter on its attribute"
call PUT /v1/items/tour-vest '{"text": "Ultralight Trail Running Vest. Sports & Outdoors > Running. Ridgeline. A hydration vest with two soft flasks.", "attributes": {"shelf": "new"}}' auth
call POST /v1/recommend "{\"user_id\": \"$U\", \"k\": 3, \"filters\": {\"shelf\": \"new\"}}"

say "what users go on to choose after an item (a product page's related items): the new one works already"
call POST /v1/related '{"item_id": "tour-vest", "k": 3}'

say "the item as served, then off the shelf: never recommended again until it is PUT back"
call GET /v1/items/tour-vest
call DELETE /v1/items/tour-vest "" auth
call POST /v1/recommend "{\"user_id\": \"$U\", \"k\": 3, \"filters\": {\"shelf\": \"new\"}}"

say "the user's history, then the user deleted (events and cached vector)"
call GET "/v1/users/$U/history?limit=3"
call DELETE "/v1/users/$U" "" auth
