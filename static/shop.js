// The buyer's page: the product and a countdown to its start, joining its waiting room, the place in line falling
// (one small GET /queue/{ticket} a second), then a Buy button with the pass once admitted, and the outcome.
// A product without a waiting room is bought directly. The ticket is kept for the tab (sessionStorage), so a
// reload keeps the place. Every time shown is the server's (the offset from its Date header).
// With verified buyers (data-auth="jwt") every buyer request carries the buyer's bearer token and no user_id: the
// token comes from the demo sign-in of the local issuer (data-demo="1", clearly marked, off in a real shop) or from
// the shop's own sign-in, which leaves it in sessionStorage under "hc-buyer-token".
(() => {
  "use strict";
  const main = document.getElementById("shop");
  const productId = Number(main.dataset.product);
  const $ = (id) => document.getElementById(id);
  const stored = `hc-ticket-${productId}`;
  const POLL_MS = 1000;
  const verified = main.dataset.auth === "jwt";
  const demo = main.dataset.demo === "1";
  const TOKEN_KEY = "hc-buyer-token"; // {token, subject, expires_at}

  let product = null;
  let offset = 0; // server clock minus this browser's, ms
  let user = null;
  let ticket = null;
  let pass = null;
  let passExpires = null;
  let pollTimer = null;
  let purchaseKey = null; // one Idempotency-Key per purchase, kept for its retries
  let signedIn = null; // verified buyers: {token, subject, expires_at}

  const now = () => Date.now() + offset;

  function clock(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const two = (n) => String(n).padStart(2, "0");
    return h ? `${h}:${two(m)}:${two(s)}` : `${two(m)}:${two(s)}`;
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // also outside secure contexts, unlike crypto.randomUUID
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function outcome(text, ok) {
    const el = $("outcome");
    el.textContent = text;
    el.className = `outcome ${ok === undefined ? "" : ok ? "ok" : "bad"}`;
  }

  function headers(extra) {
    const all = { ...extra };
    if (signedIn) all.Authorization = `Bearer ${signedIn.token}`;
    return all;
  }

  function buyerBody(fields) {
    return verified ? fields : { user_id: user, ...fields }; // a verified buyer is the token's, never a number
  }

  function keptToken() {
    const kept = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
    return kept && kept.token && Date.parse(kept.expires_at) > now() + 60_000 ? kept : null;
  }

  function showSignIn() {
    signedIn = keptToken();
    $("signin").hidden = !!signedIn || !demo;
    $("needs-signin").hidden = !!signedIn || demo;
    $("signed-in").hidden = !signedIn;
    $("who").hidden = !signedIn || ticket !== null;
    if (signedIn) $("signed-in-as").textContent = `Signed in as ${signedIn.subject}${demo ? " (demo)" : ""}.`;
  }

  function signedOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    signedIn = null;
    showSignIn();
    if (message) outcome(message, false);
  }

  async function signIn(event) {
    event.preventDefault();
    $("sign-in").disabled = true;
    try {
      const response = await fetch("/demo/sign-in", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: $("buyer-name").value.trim() }),
      });
      const body = await response.json();
      if (!response.ok) {
        outcome(body.error ? body.error.message : `error ${response.status}`, false);
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, JSON.stringify(body));
      outcome("");
      showSignIn();
      showOrders();
    } catch (err) {
      outcome("The shop cannot be reached; try again.", false);
    } finally {
      $("sign-in").disabled = false;
    }
  }

  // A refusal of the token itself (expired, keys rotated away): sign in again; nothing was done.
  function refusedToken(response) {
    if (!verified || response.status !== 401) return false;
    signedOut("Your sign-in ran out: sign in again.");
    return true;
  }

  async function showOrders() {
    if (!verified || !signedIn) return;
    const response = await fetch("/orders", { headers: headers(), cache: "no-store" });
    if (!response.ok) return;
    const body = await response.json();
    const mine = body.orders.filter((order) => order.product_id === productId);
    $("orders").hidden = mine.length === 0;
    $("order-list").replaceChildren(...mine.map((order) => {
      const item = document.createElement("li");
      item.textContent = `Order #${order.order_id}: ${order.quantity} unit(s)`;
      return item;
    }));
  }

  async function loadProduct() {
    const response = await fetch(`/products/${productId}`, { cache: "no-store" });
    const date = response.headers.get("Date");
    if (date) offset = Date.parse(date) + 500 - Date.now(); // the header has whole seconds: take the middle
    if (!response.ok) {
      $("facts").textContent = "There is no such product.";
      $("who").hidden = true;
      return;
    }
    product = await response.json();
    $("name").textContent = product.name;
    const room = product.waiting_room ? " · sold through a waiting room" : "";
    $("facts").textContent = `${product.stock} of ${product.initial_stock} left${room}`;
    $("join").textContent = product.waiting_room ? "Join the queue" : "Continue";
    $("quantity").max = String(product.max_per_order);
  }

  function tick() {
    if (!product) return;
    const starts = product.starts_at ? Date.parse(product.starts_at) : null;
    const ends = product.ends_at ? Date.parse(product.ends_at) : null;
    const t = now();
    let text = "On sale now";
    if (starts !== null && t < starts) text = `Sale starts in ${clock(starts - t)}`;
    else if (ends !== null && t >= ends) text = "The sale has ended";
    $("countdown").textContent = text;
    if (pass && passExpires !== null) {
      const left = passExpires - t;
      $("pass-left").textContent = left > 0 ? `Your turn: your pass is valid for ${clock(left)}` : "Your pass expired";
      if (left <= 0) $("buy").disabled = true;
    }
  }

  const STATUS_TEXT = {
    waiting: "You are in line",
    admitted: "It is your turn",
    expired: "Your turn passed: your pass expired",
    sold_out: "Sold out: nobody in line can buy any more",
    ended: "The sale has ended",
  };

  function show(standing) {
    $("queue").hidden = false;
    $("queue-status").textContent = STATUS_TEXT[standing.status] || standing.status;
    $("position").textContent = standing.status === "waiting" && standing.position !== null ? `#${standing.position}` : "";
    $("wait").textContent = standing.status === "waiting" && standing.estimated_wait_s !== null
      ? `about ${clock(standing.estimated_wait_s * 1000)} to wait` : "";
    if (standing.status === "admitted") {
      pass = standing.pass;
      passExpires = Date.parse(standing.pass_expires_at);
      $("buy-box").hidden = false;
      $("buy").disabled = false;
    } else {
      $("buy-box").hidden = true;
    }
    tick();
  }

  async function poll() {
    pollTimer = null;
    try {
      const response = await fetch(`/queue/${encodeURIComponent(ticket)}`, { headers: headers(), cache: "no-store" });
      if (refusedToken(response)) return;
      const body = await response.json();
      if (!response.ok) {
        outcome(body.error ? body.error.message : `error ${response.status}`, false);
        if (response.status === 404 || response.status === 409) return; // the ticket or its room is gone
      } else {
        show(body);
        if (body.status === "admitted" || body.status === "ended") return; // nothing more to wait for
      }
    } catch (err) {
      outcome("Connection lost; still trying…", false);
    }
    pollTimer = setTimeout(poll, POLL_MS);
  }

  async function join(event) {
    event.preventDefault();
    user = verified ? null : Number($("user").value);
    if (!verified && (!Number.isInteger(user) || user < 1)) {
      outcome("Type your buyer id (a whole number from 1).", false);
      return;
    }
    outcome("");
    if (!product.waiting_room) {
      $("buy-box").hidden = false;
      $("buy").disabled = false;
      return;
    }
    $("join").disabled = true;
    const response = await fetch(`/products/${productId}/queue`, {
      method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(buyerBody({})),
    });
    $("join").disabled = false;
    if (refusedToken(response)) return;
    const body = await response.json();
    if (response.status !== 202) {
      outcome(body.error ? body.error.message : `error ${response.status}`, false);
      return;
    }
    ticket = body.ticket;
    sessionStorage.setItem(stored, JSON.stringify({ user, ticket }));
    $("who").hidden = true;
    show(body);
    if (pollTimer === null && body.status !== "admitted") pollTimer = setTimeout(poll, POLL_MS);
  }

  async function buy() {
    $("buy").disabled = true;
    purchaseKey = purchaseKey || randomKey();
    const sent = headers({ "Content-Type": "application/json", "Idempotency-Key": purchaseKey });
    if (pass) sent["Queue-Pass"] = pass;
    const quantity = Number($("quantity").value) || 1;
    let response;
    try {
      response = await fetch("/purchase", {
        method: "POST", headers: sent, body: JSON.stringify(buyerBody({ product_id: productId, quantity })),
      });
    } catch (err) {
      outcome("Connection lost: press Buy again (the same purchase, it cannot be made twice).", false);
      $("buy").disabled = false;
      return;
    }
    if (refusedToken(response)) {
      purchaseKey = null; // nothing was done under it
      return;
    }
    const body = await response.json();
    if (response.ok) {
      purchaseKey = null;
      outcome(`Order #${body.order_id} placed: ${body.quantity} unit(s). Thank you!`, true);
      $("buy-box").hidden = true;
      $("queue-status").textContent = "Bought";
      loadProduct().catch(() => {}); // the stock left, as it is now
      showOrders().catch(() => {});
      return;
    }
    const error = body.error || {};
    outcome(error.message || `error ${response.status}`, false);
    if (response.status === 503 || error.code === "request_in_progress") {
      $("buy").disabled = false; // the same key again: whatever happened, it is settled once
    } else {
      purchaseKey = null;
      $("buy").disabled = response.status >= 400 && response.status < 500 && error.code !== "invalid_request";
    }
  }

  $("who").addEventListener("submit", join);
  $("signin").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(stored); // the place in line was the signed-out buyer's
    ticket = null;
    pass = null;
    $("queue").hidden = true;
    $("buy-box").hidden = true;
    $("orders").hidden = true;
    signedOut("");
  });
  $("buy").addEventListener("click", buy);
  setInterval(tick, 250);

  $("user-field").hidden = verified;
  $("user").required = !verified;
  loadProduct().then(() => {
    tick();
    if (verified) showSignIn(); // before the kept place's first poll, which carries the token
    const kept = JSON.parse(sessionStorage.getItem(stored) || "null");
    if (kept && product && product.waiting_room) {
      user = kept.user;
      ticket = kept.ticket;
      if (!verified) $("user").value = String(user);
      $("who").hidden = true;
      poll();
    }
    if (verified) {
      showOrders().catch(() => {});
    }
  }).catch(() => outcome("The shop cannot be reached; reload to try again.", false));
})();
