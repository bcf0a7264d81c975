#!/usr/bin/env bash
# Example requests against `serve run deployments/demo.yaml` (run from another terminal while it serves).
# Writes need the token the service was started with (make demo: LMREC_API_TOKEN, default demo-token).
set -euo pipefail
URL=${LMREC_URL:-http://127.0.0.1:8000}
AUTH="Authorization: Bearer ${LMREC_API_TOKEN:-demo-token}"
JSON="Content-Type: application/json"
set -x
curl -s "$URL/healthz"; echo
# a known demo user, with explanations (which of their events contributed most)
curl -s -X POST "$URL/v1/recommend" -H "$JSON" -d '{"user_id": "u0001", "k": 5, "explain": true}'; echo
# a click: acknowledged (202) once durable, and the very next recommendation reflects it
curl -s -X POST "$URL/v1/events" -H "$JSON" -H "$AUTH" -d '{"user_id": "u0001", "item_id": "i0001", "event_type": "click"}'; echo
curl -s -X POST "$URL/v1/recommend" -H "$JSON" -d '{"user_id": "u0001", "k": 5}'; echo
# a new item, encoded from its text through the LM: recommendable at once
curl -s -X PUT "$URL/v1/items/new-vest" -H "$JSON" -H "$AUTH" \
  -d '{"text": "Ultralight Trail Running Vest. Sports & Outdoors > Running. Ridgeline. A hydration vest with two soft flasks.", "attributes": {"shelf": "new"}}'; echo
curl -s -X POST "$URL/v1/recommend" -H "$JSON" -d '{"user_id": "u0001", "k": 3, "filters": {"shelf": "new"}}'; echo
# what users go on to choose after an item (a product page's "related"): the new one works already
curl -s -X POST "$URL/v1/related" -H "$JSON" -d '{"item_id": "new-vest", "k": 3}'; echo
# the item as served, then off the shelf: never recommended again (durably) until it is PUT back
curl -s "$URL/v1/items/new-vest"; echo
curl -s -X DELETE "$URL/v1/items/new-vest" -H "$AUTH"; echo
curl -s -X POST "$URL/v1/recommend" -H "$JSON" -d '{"user_id": "u0001", "k": 3, "filters": {"shelf": "new"}}'; echo
# an unknown user gets a cold-start answer; history and deletion
curl -s -X POST "$URL/v1/recommend" -H "$JSON" -d '{"user_id": "someone-new", "k": 3}'; echo
curl -s "$URL/v1/users/u0001/history?limit=3"; echo
curl -s -X DELETE "$URL/v1/users/u0001" -H "$AUTH"; echo
