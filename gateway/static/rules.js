// The page's pure rules, apart from app.js (which needs a DOM) so tests can run them with node.
"use strict";

// Apply an availability update only if its version is strictly newer than the one held: the
// Python rule (slotlock/conflation.py is_newer, used by the projection's apply_change, the
// gateway's fan-out and slotlock/client.py). An equal version is the same state seen twice (the
// listing and the stream overlap), never news.
function isNewer(known, incoming) {
  return !known || incoming.version > known.version;
}

// The most seats one hold may ask for: the service's limit (SLOTLOCK_MAX_SEATS_PER_HOLD, served
// by the gateway in /api/events; null until it has answered) and what is left, but at least 1.
function seatLimit(available, maxSeatsPerHold) {
  const cap = Number.isInteger(maxSeatsPerHold) ? maxSeatsPerHold : available;
  return Math.max(1, Math.min(cap, available));
}

// The live indicator's words. Not live means the numbers on the page may be old (the gateway
// lost the feed, or the availability service is behind it): say that updates are paused rather
// than only "reconnecting", which reads as if the numbers were still current.
function liveLabel(live) {
  return live ? "Live" : "Updates paused";
}

if (typeof module !== "undefined") module.exports = { isNewer, seatLimit, liveLabel };
