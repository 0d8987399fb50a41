// The show listing: renders /api/events, follows /api/stream (Server-Sent Events) for live
// availability, and runs the hold → pay / cancel flow of each card. No framework on purpose.
"use strict";

const BADGE_LABELS = {
  AVAILABLE: "Available",
  FEW_LEFT: "Few left",
  ALMOST_FULL: "Almost full",
  SOLD_OUT: "Sold out",
};
const BADGE_HINTS = {
  ALMOST_FULL: "Almost full and someone is paying right now",
  FEW_LEFT: "Only a few seats left",
};
// The reservation service's limit, from /api/events (rules.js seatLimit copes with null).
let maxSeatsPerHold = null;
// The simulated "Pay" exists in demo mode only (the gateway says which); else a payment
// provider confirms holds, and the page only holds and cancels.
let demoPayments = false;

const state = {
  events: new Map(), // event_id -> latest availability (newest version wins)
  cards: new Map(), // event_id -> card element
};

const els = {
  list: document.querySelector('[data-testid="event-list"]'),
  empty: document.querySelector('[data-testid="empty"]'),
  banner: document.querySelector('[data-testid="banner"]'),
  live: document.querySelector('[data-testid="live-status"]'),
  template: document.getElementById("card-template"),
};

// ---- formatting -------------------------------------------------------------------------------

const moneyFormats = new Map();
function formatMoney(money) {
  if (!money || !money.currency) return "";
  let fmt = moneyFormats.get(money.currency);
  if (!fmt) {
    const locale = money.currency === "VND" ? "vi-VN" : undefined;
    fmt = new Intl.NumberFormat(locale, { style: "currency", currency: money.currency });
    moneyFormats.set(money.currency, fmt);
  }
  return fmt.format(money.amount);
}

const dateFormat = new Intl.DateTimeFormat("en-GB", {
  weekday: "short", day: "numeric", month: "short", year: "numeric", timeZone: "UTC",
});
function formatDate(localDate) {
  // A calendar date in the event's own time zone: format it as-is, never shifted by ours.
  const parsed = new Date(`${localDate}T00:00:00Z`);
  return Number.isNaN(parsed.getTime()) ? localDate : dateFormat.format(parsed);
}

function formatCountdown(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const minutes = Math.floor(total / 60);
  const seconds = String(total % 60).padStart(2, "0");
  return `${minutes}:${seconds}`;
}

function seats(n) {
  return `${n} seat${n === 1 ? "" : "s"}`;
}

// ---- the connection banner ----------------------------------------------------------------------

let loadError = "";
let feedMessage = "";
function showBanner() {
  const text = loadError || feedMessage;
  els.banner.hidden = !text;
  els.banner.textContent = text;
  els.banner.dataset.kind = loadError ? "error" : "warning";
}

function setLive(live, message) {
  els.live.dataset.live = String(live);
  els.live.textContent = liveLabel(live); // rules.js
  feedMessage = live ? "" : capitalise(message || "Live updates paused; reconnecting…");
  showBanner();
}

function capitalise(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

// ---- cards --------------------------------------------------------------------------------------

function isListed(ev) {
  if (ev.status === "CANCELLED") return false;
  return !ev.starts_at || Date.parse(ev.starts_at) >= Date.now();
}

function sortKey(ev) {
  return `${ev.starts_at || ""}|${ev.code}`;
}

function applyEvent(ev) {
  const known = state.events.get(ev.event_id);
  if (!isNewer(known, ev)) return; // versions never go back (rules.js)
  state.events.set(ev.event_id, ev);
  if (!isListed(ev)) {
    const card = state.cards.get(ev.event_id);
    if (card) card.remove();
    state.cards.delete(ev.event_id);
  } else {
    let card = state.cards.get(ev.event_id);
    if (!card) {
      card = createCard(ev);
      state.cards.set(ev.event_id, card);
    }
    placeCard(card, ev);
    renderCard(card, ev);
  }
  els.empty.hidden = state.cards.size > 0;
}

function placeCard(card, ev) {
  const key = sortKey(ev);
  card.dataset.sortKey = key;
  let before = null;
  for (const other of els.list.children) {
    if (other !== card && other.dataset.sortKey > key) {
      before = other;
      break;
    }
  }
  if (card.parentNode !== els.list || card.nextSibling !== before) {
    els.list.insertBefore(card, before);
  }
}

function part(card, testid) {
  return card.querySelector(`[data-testid="${testid}"]`);
}

function span(text, testid, className) {
  const el = document.createElement("span");
  el.textContent = text;
  if (testid) el.dataset.testid = testid;
  if (className) el.className = className;
  return el;
}

function dot() {
  return span(" • ", null, "dot");
}

function renderCard(card, ev) {
  Object.assign(card.dataset, {
    eventId: ev.event_id,
    code: ev.code,
    badge: ev.badge,
    paid: ev.paid,
    pending: ev.pending,
    available: ev.available,
    version: ev.version,
  });
  part(card, "event-title").textContent = ev.title || ev.code;
  part(card, "event-date").textContent = formatDate(ev.local_date);
  part(card, "event-time").textContent = ev.local_start_time;

  const prices = part(card, "prices");
  prices.replaceChildren();
  const offers = [];
  if (ev.dinner_price) offers.push(["Dinner & show", ev.dinner_price]);
  if (ev.experience_only_enabled && ev.experience_only_price) {
    offers.push(["Show only", ev.experience_only_price]);
  }
  offers.forEach(([label, money], i) => {
    if (i > 0) prices.append(span(" · ", null, "price-label"));
    const offer = span("", null, "price");
    offer.append(span(`${label} `, null, "price-label"), formatMoney(money));
    prices.append(offer);
  });
  part(card, "ticket-type").closest(".ticket-field").hidden = !ev.experience_only_enabled;

  // "P paid • N being processed • A available"; the middle part only while someone is paying.
  const line = part(card, "live-line");
  line.replaceChildren(span(`${ev.paid} paid`, "paid"));
  if (ev.pending > 0) {
    line.append(dot(), span(`${ev.pending} being processed`, "processing", "processing"));
  }
  line.append(dot(), span(`${ev.available} available`, "available"));

  const badge = part(card, "badge");
  badge.textContent = BADGE_LABELS[ev.badge] || "";
  badge.className = `badge badge-${ev.badge}`;
  badge.hidden = !BADGE_LABELS[ev.badge];
  badge.title = BADGE_HINTS[ev.badge] || "";
  const hint = part(card, "badge-hint");
  hint.textContent = ev.badge === "ALMOST_FULL" ? BADGE_HINTS.ALMOST_FULL : "";
  hint.hidden = !hint.textContent;

  const quantity = part(card, "quantity-input");
  quantity.max = String(seatLimit(ev.available, maxSeatsPerHold));
  const soldOut = ev.available <= 0 || ev.badge === "SOLD_OUT" || ev.status === "SOLD_OUT";
  const book = part(card, "book-button");
  book.disabled = soldOut;
  book.textContent = soldOut ? "Sold out" : "Book Now";
}

function createCard(ev) {
  const card = els.template.content.firstElementChild.cloneNode(true);
  const hold = { id: null, token: null, deadline: 0, timer: null, quantity: 0 };

  const form = part(card, "book-form");
  const panel = part(card, "hold-panel");
  const book = part(card, "book-button");
  const result = part(card, "hold-result");
  const error = part(card, "error");

  function show(which) {
    book.hidden = which !== "book";
    form.hidden = which !== "form";
    panel.hidden = which !== "hold";
  }
  function say(message) {
    result.textContent = message || "";
    result.hidden = !message;
  }
  function fail(message) {
    error.textContent = capitalise(message || "");
    error.hidden = !message;
  }
  function busy(on) {
    for (const button of card.querySelectorAll(".booking button")) {
      if (on) button.dataset.wasDisabled = String(button.disabled);
      button.disabled = on ? true : button.dataset.wasDisabled === "true";
    }
  }
  function stopTimer() {
    if (hold.timer) clearInterval(hold.timer);
    hold.timer = null;
  }
  function tick() {
    const left = hold.deadline - performance.now();
    part(card, "hold-countdown").textContent = formatCountdown(left);
    if (left <= 0) {
      stopTimer();
      show("book");
      fail("Your hold expired and the seats went back on sale. You can book again.");
    }
  }

  book.addEventListener("click", () => {
    say("");
    fail("");
    show("form");
    part(card, "quantity-input").focus();
  });
  part(card, "back-button").addEventListener("click", () => {
    fail("");
    show("book");
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fail("");
    const quantity = Number.parseInt(part(card, "quantity-input").value, 10);
    const ticketField = part(card, "ticket-type");
    const body = {
      event_id: card.dataset.eventId,
      quantity: Number.isNaN(quantity) ? 0 : quantity,
      ticket_type: ticketField.closest(".ticket-field").hidden ? "dinner" : ticketField.value,
      idempotency_key: newKey(),
    };
    busy(true);
    const reply = await post("/api/holds", body);
    busy(false);
    if (!reply.ok) return fail(reply.error);
    showHold(reply.data);
  });

  // The hold's token also lives in an HttpOnly cookie the gateway set, so after a reload the
  // page still pays or cancels it (restoreHold); without a token in memory the cookie is used.
  function showHold(data) {
    hold.id = data.reservation_id;
    hold.token = data.hold_token || null;
    hold.quantity = data.reservation.quantity;
    hold.deadline = performance.now() + (data.expires_in_s ?? 0) * 1000;
    part(card, "hold-summary").textContent = demoPayments
      ? `${seats(hold.quantity)} held for you. Pay before the timer runs out.`
      : `${seats(hold.quantity)} held for you until the timer runs out.`;
    part(card, "pay-button").hidden = !demoPayments;
    card.dataset.holdId = hold.id;
    show("hold");
    stopTimer();
    tick();
    hold.timer = setInterval(tick, 250);
  }
  card.restoreHold = showHold;
  function tokenBody() {
    return hold.token ? { hold_token: hold.token } : {};
  }

  part(card, "pay-button").addEventListener("click", async () => {
    fail("");
    busy(true);
    const reply = await post(`/api/holds/${encodeURIComponent(hold.id)}/pay`, tokenBody());
    busy(false);
    if (!reply.ok) {
      fail(reply.error);
      if (reply.status === 409 || reply.status === 404) {
        stopTimer();
        show("book");
      }
      return;
    }
    stopTimer();
    show("book");
    const paid = reply.data.reservation;
    const late = paid.paid_late ? " Your hold had lapsed, but the seats were still free." : "";
    say(`Paid — ${seats(hold.quantity)} booked. Reference ${paid.payment_reference}.${late}`);
  });

  part(card, "cancel-button").addEventListener("click", async () => {
    fail("");
    busy(true);
    const reply = await post(`/api/holds/${encodeURIComponent(hold.id)}/cancel`, tokenBody());
    busy(false);
    stopTimer();
    show("book");
    if (!reply.ok) return fail(reply.error);
    say("Hold released; the seats are back on sale.");
  });

  return card;
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

// ---- talking to the gateway ---------------------------------------------------------------------

async function post(url, body) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch {
    return { ok: false, status: 0, error: "Cannot reach the booking site; check your connection." };
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || "Something went wrong; please try again.";
    return { ok: false, status: response.status, error: message };
  }
  return { ok: true, status: response.status, data };
}

async function loadEvents() {
  try {
    const response = await fetch("/api/events");
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      loadError = (data && data.error) || "Could not load the shows; please try again.";
    } else {
      loadError = "";
      if (Number.isInteger(data.max_seats_per_hold) && data.max_seats_per_hold !== maxSeatsPerHold) {
        maxSeatsPerHold = data.max_seats_per_hold;
        for (const [eventId, card] of state.cards) renderCard(card, state.events.get(eventId));
      }
      demoPayments = data.demo_payments === true;
      for (const ev of data.events) applyEvent(ev);
      els.empty.hidden = state.cards.size > 0;
    }
  } catch {
    loadError = "Cannot reach the booking site; check your connection.";
  }
  showBanner();
}

function follow() {
  const source = new EventSource("/api/stream");
  source.addEventListener("availability", (message) => {
    applyEvent(JSON.parse(message.data));
    if (loadError) {
      loadError = "";
      showBanner();
    }
  });
  source.addEventListener("status", (message) => {
    const status = JSON.parse(message.data);
    setLive(status.live, status.message);
    if (status.live && loadError) loadEvents();
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; say so meanwhile.
    setLive(false, "Lost the connection to the booking site; reconnecting…");
  });
}

// A hold this browser made before a reload (its cookie): show it again on its card.
async function restoreHold() {
  try {
    const response = await fetch("/api/holds/current");
    if (!response.ok) return;
    const data = await response.json();
    const card = state.cards.get(data.reservation.event_id);
    if (card && card.restoreHold) card.restoreHold(data);
  } catch {
    // No hold to show: the page works as before.
  }
}

loadEvents().then(restoreHold);
follow();
