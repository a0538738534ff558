// The buyer's page: the product and a countdown to its start, joining its waiting room, the place in line falling
// (one small GET /queue/{ticket} a second), then a Buy button with the pass once admitted, and the outcome.
// A product without a waiting room is bought directly. The ticket is kept for the tab (sessionStorage), so a
// reload keeps the place. Every time shown is the server's (the offset from its Date header).
// With verified buyers (data-auth="jwt") every buyer request carries the buyer's bearer token and no user_id: the
// token comes from the demo sign-in of the local issuer (data-demo="1", clearly marked, off in a real shop) or from
// the shop's own sign-in, which leaves it in sessionStorage under "hc-buyer-token".
// A priced product with payments on (data-payments="simulator") is held (POST /checkouts) and paid on the payment
// page; back from it, the page asks the service (POST …/confirm), which asks the provider: paid, declined (try
// another card), still processing, or ended without an order. The checkout is kept for the tab meanwhile.
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
  const payments = main.dataset.payments || "off";
  const CHECKOUT_KEY = `hc-checkout-${productId}`; // {id, paying}

  let product = null;
  let offset = 0; // server clock minus this browser's, ms
  let user = null;
  let ticket = null;
  let pass = null;
  let passExpires = null;
  let pollTimer = null;
  let purchaseKey = null; // one Idempotency-Key per purchase, kept for its retries
  let signedIn = null; // verified buyers: {token, subject, expires_at}
  let holdExpires = null; // a paid checkout's hold, while it runs
  let checkout = null; // the paid checkout being paid: its JSON

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

  const paid = () => !!product && product.price > 0 && payments !== "off";

  function money(amount, currency) {
    const code = currency.toUpperCase();
    try {
      const format = new Intl.NumberFormat("en", { style: "currency", currency: code });
      const digits = format.resolvedOptions().maximumFractionDigits;
      return format.format(amount / 10 ** digits);
    } catch (err) {
      return `${amount} ${code} (minor units)`;
    }
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
    const price = product.price > 0 ? `${money(product.price, product.currency)} · ` : "";
    $("facts").textContent = `${price}${product.stock} of ${product.initial_stock} left${room}`;
    $("join").textContent = product.waiting_room ? "Join the queue" : "Continue";
    $("quantity").max = String(product.max_per_order);
    $("buy").textContent = paid() ? "Hold and pay" : "Buy now";
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
    if (holdExpires !== null) {
      const left = holdExpires - t;
      $("hold-left").textContent = left > 0 ? `held for you for ${clock(left)} while you pay` : "Your hold ran out";
    }
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
    if (standing.status === "admitted" && sessionStorage.getItem(CHECKOUT_KEY)) {
      $("buy-box").hidden = true; // its pass took the checkout being paid
    } else if (standing.status === "admitted") {
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

  function showCheckout(body) {
    checkout = body;
    const kept = JSON.parse(sessionStorage.getItem(CHECKOUT_KEY) || "null");
    sessionStorage.setItem(CHECKOUT_KEY, JSON.stringify({ id: body.checkout_id, paying: !!(kept && kept.paying) }));
    $("buy-box").hidden = true;
    $("who").hidden = true;
    const payment = body.payment || {};
    if (body.status === "confirmed") {
      endCheckout(`Paid. Order #${body.order_id}: ${body.quantity} unit(s). Thank you!`, true);
      return;
    }
    if (body.status !== "held" || payment.status === "cancelled") {
      endCheckout(body.status === "released" ? "You let the units go; nothing was charged."
        : "Your hold ran out before the payment arrived and its units went to others: nothing was charged.", false);
      return;
    }
    $("pay-box").hidden = false;
    $("held-for-you").textContent = `${body.quantity} unit(s) held for you · ${money(payment.amount, payment.currency)}`;
    holdExpires = Date.parse(body.expires_at);
    $("pay").disabled = !payment.pay_url;
    if (!payment.pay_url) outcome("Paying needs the shop's payment form (Stripe.js with the client secret).", false);
    tick();
  }

  function endCheckout(text, ok) {
    sessionStorage.removeItem(CHECKOUT_KEY);
    checkout = null;
    holdExpires = null;
    $("pay-box").hidden = true;
    outcome(text, ok);
    if (ok) {
      $("queue-status").textContent = "Bought";
      loadProduct().catch(() => {});
      showOrders().catch(() => {});
    }
  }

  function pay() {
    const payment = checkout && checkout.payment;
    if (!payment || !payment.pay_url) return;
    sessionStorage.setItem(CHECKOUT_KEY, JSON.stringify({ id: checkout.checkout_id, paying: true }));
    const back = location.href.split("#")[0];
    location.assign(`${payment.pay_url}&return_url=${encodeURIComponent(back)}`);
  }

  // Back from the payment page (or reloaded): where the checkout stands, and, if the buyer went to pay, the
  // service's word on the payment (it asks the provider: no waiting for a webhook).
  async function resumeCheckout(kept) {
    const response = await fetch(`/checkouts/${encodeURIComponent(kept.id)}`, { headers: headers(), cache: "no-store" });
    if (refusedToken(response)) return;
    if (!response.ok) {
      sessionStorage.removeItem(CHECKOUT_KEY);
      return;
    }
    showCheckout(await response.json());
    if (checkout && kept.paying) await askConfirm();
  }

  async function askConfirm() {
    const id = checkout.checkout_id;
    const response = await fetch(`/checkouts/${encodeURIComponent(id)}/confirm`, {
      method: "POST", headers: headers(),
    });
    if (refusedToken(response)) return;
    const body = await response.json();
    if (response.ok) {
      endCheckout(`Paid. Order #${body.order_id}: ${body.quantity} unit(s). Thank you!`, true);
      return;
    }
    const error = body.error || {};
    const payment = error.payment || {};
    if (error.code === "payment_required" && payment.declined) {
      outcome("Your card was declined: nothing was charged. Try another card.", false);
    } else if (error.code === "payment_required" && payment.provider_status === "processing") {
      outcome("Your payment is being processed…");
      setTimeout(() => askConfirm().catch(() => {}), POLL_MS);
    } else if (error.code === "payment_required") {
      outcome("Not paid yet: the units stay held for you until the time runs out.");
    } else if (response.status === 503) {
      outcome("The payment provider cannot be reached; still trying…", false);
      setTimeout(() => askConfirm().catch(() => {}), 2 * POLL_MS);
    } else {
      endCheckout(error.message || `error ${response.status}`, false);
    }
  }

  async function buy() {
    $("buy").disabled = true;
    purchaseKey = purchaseKey || randomKey();
    const sent = headers({ "Content-Type": "application/json", "Idempotency-Key": purchaseKey });
    if (pass) sent["Queue-Pass"] = pass;
    const quantity = Number($("quantity").value) || 1;
    let response;
    try {
      response = await fetch(paid() ? "/checkouts" : "/purchase", {
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
    if (response.ok && paid()) {
      purchaseKey = null;
      outcome("");
      showCheckout(body);
      return;
    }
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
  $("pay").addEventListener("click", pay);
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
    const keptCheckout = JSON.parse(sessionStorage.getItem(CHECKOUT_KEY) || "null");
    if (keptCheckout && (!verified || signedIn)) resumeCheckout(keptCheckout).catch(() => {});
  }).catch(() => outcome("The shop cannot be reached; reload to try again.", false));
})();
