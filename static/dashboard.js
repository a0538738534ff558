// The live dashboard: renders snapshots pushed over /admin/live, reconnects by itself, says when data is stale.
(function () {
  "use strict";

  const root = document.getElementById("dashboard");
  const xsrf = root.dataset.xsrf;
  const STALE_AFTER_MS = 2000;
  const COLORS = { "200": "#22c55e", "409": "#f59e0b", "429": "#a78bfa", "4xx": "#60a5fa", "overloaded": "#94a3b8",
                   "5xx": "#ef4444" };
  const $ = (id) => document.getElementById(id);

  let chart = null;
  let lastMessageAt = 0;
  let socket = null;
  let retryDelay = 500;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));

  function setConnection(state, text) {
    const pill = $("connection");
    pill.className = "pill pill-" + state;
    pill.textContent = text;
  }

  async function post(path, fields) {
    const body = new URLSearchParams({ ...fields, _xsrf: xsrf });
    const response = await fetch(path, { method: "POST", body, credentials: "same-origin",
                                         headers: { "X-XSRFToken": xsrf } });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
    return data;
  }

  function say(text) { $("action-result").textContent = text; }

  // Live pushes update figures in place and never rebuild a form: a value the operator is typing (or has typed
  // and not yet sent) survives every snapshot, and a button is never swapped out under the pointer.
  function syncKeyed(container, items, keyOf, create, update) {
    const existing = new Map([...container.children].filter((n) => n.dataset.key !== undefined)
      .map((n) => [n.dataset.key, n]));
    const wanted = items.map((item) => {
      const key = String(keyOf(item));
      let node = existing.get(key);
      if (!node) {
        node = create(item);
        node.dataset.key = key;
      }
      existing.delete(key);
      update(node, item);
      return node;
    });
    for (const stale of existing.values()) stale.remove();
    for (const child of [...container.children]) if (child.dataset.key === undefined) child.remove();
    wanted.forEach((node, index) => {
      if (container.children[index] !== node) container.insertBefore(node, container.children[index] || null);
    });
  }

  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

  // A field the operator owns from the first keystroke until its value was sent and accepted.
  function ownedInput(attrs) {
    const input = el("input", attrs);
    input.addEventListener("input", () => { input.dataset.edited = "true"; });
    return input;
  }
  function ownedSelect(attrs, options) {
    const select = el("select", attrs, ...options.map((value) => el("option", { value }, value)));
    select.addEventListener("change", () => { select.dataset.edited = "true"; });
    return select;
  }
  const ownedNumberInput = (attrs) => ownedInput({ type: "number", min: "0", step: "1", inputmode: "numeric",
                                                   ...attrs });
  const untouched = (input) => input.dataset.edited !== "true" && document.activeElement !== input;
  function follow(input, value) { if (untouched(input) && input.value !== value) input.value = value; }

  // The server's clock, as far as the snapshots tell it: countdowns end when the server's sale starts.
  let clockOffset = 0;
  const serverNow = () => Date.now() + clockOffset;

  function statusOf(p, now) {
    if (p.ends_at && now >= Date.parse(p.ends_at)) return "ended";
    if (p.starts_at && now < Date.parse(p.starts_at)) return "scheduled";
    return p.stock === 0 ? "sold_out" : "live";
  }
  const BADGES = { scheduled: "SCHEDULED", live: "LIVE", sold_out: "SOLD OUT", ended: "ENDED" };

  function duration(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const d = Math.floor(total / 86400), h = Math.floor((total % 86400) / 3600);
    const m = Math.floor((total % 3600) / 60), sec = total % 60;
    const clock = [h, m, sec].map((n) => String(n).padStart(2, "0")).join(":");
    return d ? `${d}d ${clock}` : clock;
  }

  // Status and countdown follow the clock between pushes: the badge turns LIVE at the start instant itself.
  function tick(card) {
    const p = card.product;
    if (!p) return;
    const now = serverNow();
    const status = statusOf(p, now);
    const badge = card.querySelector("[data-field=badge]");
    const wanted = "badge badge-" + status.replace("_", "");
    if (badge.className !== wanted) badge.className = wanted;
    setText(badge, BADGES[status]);
    card.dataset.status = status;
    let countdown = "";
    if (status === "scheduled") countdown = "starts in " + duration(Date.parse(p.starts_at) - now);
    else if (p.ends_at && status !== "ended") countdown = "ends in " + duration(Date.parse(p.ends_at) - now);
    setText(card.querySelector("[data-field=countdown]"), countdown);
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

  function productCard(p) {
    const input = ownedNumberInput({ "aria-label": "New stock for " + p.name, id: "reset-stock-" + p.id,
                                     value: String(p.initial_stock) });
    const reset = el("button", { type: "button", id: "reset-" + p.id }, "Reset");
    const edit = (name, label, attrs) => el("label", {}, label,
      ownedInput({ name, id: `edit-${name}-${p.id}`, ...attrs }));
    const form = el("form", { class: "product-form", id: "edit-" + p.id, novalidate: "" },
      edit("name", "Name", { maxlength: "200" }),
      edit("starts_at", "Starts", { placeholder: "empty: on sale now" }),
      edit("ends_at", "Ends", { placeholder: "empty: no end" }),
      edit("per_user_limit", "Per buyer", { inputmode: "numeric", placeholder: "no limit" }),
      edit("max_per_order", "Per order", { inputmode: "numeric" }),
      el("label", {}, "Waiting room", ownedSelect({ name: "waiting_room", id: "edit-waiting_room-" + p.id },
                                                  ["off", "on"])),
      edit("admit_per_second", "Admit / s", { inputmode: "numeric", placeholder: "100" }),
      edit("pass_seconds", "Pass valid (s)", { inputmode: "numeric", placeholder: "120" }),
      edit("hold_seconds", "Holds (s)", { inputmode: "numeric", placeholder: "600" }),
      edit("price", "Price (minor units)", { inputmode: "numeric", placeholder: "0" }),
      edit("currency", "Currency", { maxlength: "3", placeholder: "usd" }),
      el("div", { class: "reset" }, el("button", { type: "submit", id: "save-" + p.id }, "Save"),
         el("button", { type: "button", class: "danger", id: "delete-" + p.id }, "Delete")));
    const card = el("div", { class: "card", id: "product-" + p.id },
      el("div", { class: "row" }, el("strong", { "data-field": "title" }), el("span", { "data-field": "badge" })),
      el("div", { class: "countdown", "data-field": "countdown", role: "timer" }),
      el("div", { class: "big", "data-field": "stock", "aria-label": "stock left" }),
      el("div", { class: "muted small", "data-field": "summary" }),
      el("div", { class: "small", "data-field": "held" }),
      el("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
                  "aria-label": "share sold" }, el("div", { "data-field": "bar" })),
      el("div", { class: "muted small", "data-field": "window" }),
      el("div", { class: "small queue-line", "data-field": "queue" }),
      el("div", { class: "reset" }, input, reset),
      el("details", {}, el("summary", {}, "Edit window and limits"), form));
    reset.addEventListener("click", () => resetProduct(card, input));
    form.addEventListener("submit", (event) => { event.preventDefault(); saveProduct(card, form); });
    card.querySelector("#delete-" + p.id).addEventListener("click", () => deleteProduct(card));
    return card;
  }

  function updateProductCard(card, p) {
    card.product = p;
    const field = (name) => card.querySelector(`[data-field=${name}]`);
    const pct = p.initial_stock ? Math.round((100 * p.sold) / p.initial_stock) : 0;
    setText(field("title"), `#${p.id} ${p.name}`);
    setText(field("stock"), fmt(p.stock));
    setText(field("held"), p.held || p.holds_expiring
      ? `${fmt(p.held)} held by checkouts (may come back) · ${fmt(p.holds_expiring || 0)} expiring within a minute · ` +
        `holds of ${fmt(p.hold_seconds)} s`
      : `nothing held · holds of ${fmt(p.hold_seconds)} s`);
    setText(field("summary"), `available · ${fmt(p.sold)} sold of ${fmt(p.initial_stock)} (${pct}%) · ` +
      `${fmt(p.orders)} orders` + (p.per_user_limit ? ` · at most ${fmt(p.per_user_limit)} per buyer` : "") +
      ` · ${fmt(p.max_per_order)} per order · ${p.price ? `${fmt(p.price)} ${p.currency.toUpperCase()} (minor units) each` : "free"}`);
    setText(field("window"), [p.starts_at ? "from " + when(p.starts_at) : "on sale now",
                              p.ends_at ? "until " + when(p.ends_at) : "no end"].join(" · "));
    const q = p.queue;
    setText(field("queue"), p.waiting_room
      ? `Waiting room: ${q ? fmt(q.length) : "?"} joined · ` +
        `${q ? fmt(q.admitted) : "?"} admitted · ` +
        `${fmt(p.admit_per_second)}/s · passes of ${fmt(p.pass_seconds)} s · ${fmt(p.passes_used ?? 0)} passes used`
      : "");
    field("bar").style.width = pct + "%";
    card.querySelector(".progress").setAttribute("aria-valuenow", String(pct));
    follow(card.querySelector("#reset-stock-" + p.id), String(p.initial_stock));
    const form = card.querySelector("form");
    follow(form.elements.name, p.name);
    follow(form.elements.starts_at, p.starts_at || "");
    follow(form.elements.ends_at, p.ends_at || "");
    follow(form.elements.per_user_limit, p.per_user_limit ? String(p.per_user_limit) : "");
    follow(form.elements.max_per_order, String(p.max_per_order));
    follow(form.elements.waiting_room, p.waiting_room ? "on" : "off");
    follow(form.elements.admit_per_second, p.waiting_room ? String(p.admit_per_second) : "");
    follow(form.elements.pass_seconds, p.waiting_room ? String(p.pass_seconds) : "");
    follow(form.elements.hold_seconds, String(p.hold_seconds));
    follow(form.elements.price, String(p.price));
    follow(form.elements.currency, p.currency);
    tick(card);
  }

  async function resetProduct(card, input) {
    const p = card.product;
    // The value is read once: the dialog shows it, the request carries it, whatever a push does meanwhile.
    const stock = input.value.trim();
    if (!/^\d{1,10}$/.test(stock)) { say(`Reset refused: "${stock}" is not a whole number of units.`); return; }
    const question = `Reset "${p.name}" (product ${p.id}) to ${fmt(stock)} units?\n` +
      `This deletes its ${fmt(p.orders)} orders (${fmt(p.sold)} units sold).`;
    if (!window.confirm(question)) return;
    try {
      const done = await post("/admin/reset", { product_id: p.id, stock });
      delete input.dataset.edited;
      input.value = String(done.stock);
      say(`Product ${done.product_id} reset to ${fmt(done.stock)} units; ${fmt(done.deleted_orders)} orders ` +
          "deleted." + (done.announced ? "" : " Redis was unreachable: replicas pick it up within a second."));
    } catch (err) { say("Reset failed: " + err.message + " Nothing was changed."); }
  }

  async function saveProduct(card, form) {
    const p = card.product;
    const fields = Object.fromEntries(new FormData(form).entries());
    try {
      const done = await post("/admin/products/" + p.id, fields);
      for (const input of form.elements) delete input.dataset.edited;
      updateProductCard(card, { ...p, ...done.product });
      say(`Product ${p.id} saved: ${BADGES[done.product.status].toLowerCase()}.` +
          (done.announced ? "" : " Redis was unreachable: replicas pick it up within a second."));
    } catch (err) { say("Save failed: " + err.message + " Nothing was changed."); }
  }

  async function deleteProduct(card) {
    const p = card.product;
    const orders = p.orders ? ` and its ${fmt(p.orders)} orders (${fmt(p.sold)} units sold)` : "";
    if (!window.confirm(`Delete "${p.name}" (product ${p.id})${orders}? This cannot be undone.`)) return;
    try {
      const done = await post(`/admin/products/${p.id}/delete`, { with_orders: p.orders ? "true" : "false" });
      card.remove();
      say(`Product ${done.deleted} deleted with ${fmt(done.deleted_orders)} orders.`);
    } catch (err) { say("Delete failed: " + err.message); }
  }

  $("create-product").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const fields = Object.fromEntries(new FormData(form).entries());
    try {
      const done = await post("/admin/products", fields);
      form.reset();
      say(`Product ${done.product.id} "${done.product.name}" created: ${BADGES[done.product.status].toLowerCase()}.`);
    } catch (err) { say("Create failed: " + err.message + " Nothing was created."); }
  });

  function renderProducts(products) {
    syncKeyed($("products"), products, (p) => p.id, productCard, updateProductCard);
  }

  function renderReplicas(hits, seen) {
    const names = Array.from(new Set([...Object.keys(hits), ...Object.keys(seen)])).sort();
    const max = Math.max(1, ...names.map((n) => hits[n] || 0));
    const total = names.reduce((sum, n) => sum + (hits[n] || 0), 0);
    $("replicas").replaceChildren(...names.map((name) => {
      const fill = el("div", { class: "fill" });
      fill.style.width = Math.round((100 * (hits[name] || 0)) / max) + "%";
      const age = seen[name];
      const label = el("span", { title: age === undefined ? "" : `last report ${age}s ago` },
                       name + (age !== undefined && age > 5 ? " (silent)" : ""));
      return el("div", { class: "bar", "data-replica": name },
        label, el("div", { class: "track" }, fill), el("span", { class: "count", "data-count": String(hits[name] || 0) }, fmt(hits[name] || 0),
                          el("span", { class: "muted small" }, ` ${total ? Math.round((100 * (hits[name] || 0)) / total) : 0}%`)));
    }));
    if (!names.length) $("replicas").replaceChildren(el("p", { class: "muted" }, "No purchases counted yet."));
  }

  function unbanButton(kind, value) {
    return el("button", { type: "button", "data-unban": `${kind}:${value}`, onclick: async () => {
      try {
        const done = await post("/admin/unban", { kind, value });
        say(`Unbanned ${kind} ${value}.` + (done.removed ? "" : " (Nothing was left to remove.)"));
      } catch (err) { say("Unban failed: " + err.message); }
    } }, "Unban");
  }

  // Rows keyed by who they name, updated in place, so an Unban button is never replaced while it is clicked.
  function syncRows(tbody, items, attr, cells, emptyText) {
    const row = (item) => {
      const tr = el("tr", { [attr]: `${item.kind}:${item.value}` }, el("td", {}, item.kind), el("td", {}, item.value),
                    el("td", { class: "num" }), el("td", {}, unbanButton(item.kind, item.value)));
      return tr;
    };
    const update = (tr, item) => setText(tr.children[2], cells(item));
    if (!items.length) {
      if (!tbody.querySelector("tr.empty")) {
        tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "4", class: "muted" }, emptyText)));
      }
      return;
    }
    syncKeyed(tbody, items, (item) => `${item.kind}:${item.value}`, row, update);
  }

  function renderLimits(snap) {
    const s = snap.settings;
    setText($("limit-settings"),
      `Per buyer ${s.rate_limit} (burst ${s.rate_burst}) · per address ${s.ip_rate_limit} · ` +
      `ban after ${s.ban_after} rejections for ${s.ban_seconds}s`);
    syncRows($("bans"), snap.bans || [], "data-ban", (b) => Math.ceil(b.seconds_left) + " s", "No active bans.");
    syncRows($("limited"), snap.top_limited || [], "data-limited", (t) => fmt(t.rejections),
             "Nobody is being limited.");
  }

  function renderOrders(orders) {
    $("orders").replaceChildren(...(orders.length ? orders.map((o) => el("tr", {},
      el("td", { class: "num" }, o.id), el("td", { class: "num" }, o.user_id), el("td", { class: "num" }, o.product_id),
      el("td", { class: "num" }, o.quantity), el("td", {}, new Date(o.created_at).toLocaleTimeString()),
      el("td", {}, o.replica))) : [el("tr", {}, el("td", { colspan: "6", class: "muted" }, "No orders yet."))]));
  }

  // The holds closest to running out, each with a button that gives its units back at once.
  function renderHolds(holds) {
    const tbody = $("holds");
    if (!holds.length) {
      if (!tbody.querySelector("tr.empty")) {
        tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "6", class: "muted" }, "Nothing held.")));
      }
      return;
    }
    const row = (h) => el("tr", { "data-hold": h.checkout_id },
      el("td", {}, el("code", {}, h.checkout_id.slice(0, 12) + "…")), el("td", { class: "num" }, h.product_id),
      el("td", { class: "num" }, h.user_id), el("td", { class: "num" }, h.quantity), el("td", {}),
      el("td", {}, el("button", { type: "button", "data-release": h.checkout_id, onclick: async () => {
        try {
          const done = await post(`/admin/checkouts/${h.checkout_id}/release`, {});
          say(`Checkout ${done.checkout_id}: ${done.status}; ${fmt(done.quantity)} unit(s) of product ` +
              `${done.product_id} back on sale.`);
        } catch (err) { say("Release failed: " + err.message); }
      } }, "Release")));
    const update = (tr, h) => {
      const left = Date.parse(h.expires_at) - (Date.now() + clockOffset);
      setText(tr.children[4], left > 0 ? "in " + duration(left) : "expired");
    };
    syncKeyed(tbody, holds, (h) => h.checkout_id, row, update);
  }

  function renderHealth(snap) {
    const facts = [
      ["PostgreSQL", snap.postgres], ["Redis", snap.redis], ["Strategy", snap.settings.strategy],
      ["Max per order", snap.settings.max_quantity], ["Limiter fail-opens (this replica)", snap.limiter_fail_open],
      ["Orders", fmt(snap.orders)],
    ];
    $("health").replaceChildren(...facts.flatMap(([k, v]) => [
      el("dt", {}, k),
      el("dd", { class: v === "ok" ? "state-ok" : v === "unreachable" ? "state-bad" : "" }, v),
    ]));
  }

  function renderChart(snap) {
    // The current second is still being counted: drawing it would show a false dip at the right edge.
    const history = (snap.history || []).slice(0, -1);
    const outcomes = snap.outcomes;
    const data = [history.map((h) => h.t), ...outcomes.map((o) => history.map((h) => h[o]))];
    const box = $("rate-chart");
    if (!chart && window.uPlot) {
      chart = new window.uPlot({
        width: Math.max(240, box.clientWidth), height: 260,
        scales: { x: { time: true } },
        legend: { show: false },  // the legend below the chart names each colour and its latest value
        axes: [{ stroke: "#a7b4c8", grid: { stroke: "#334155" }, space: 70 },
               { stroke: "#a7b4c8", grid: { stroke: "#334155" }, label: "req/s" }],
        series: [{}, ...outcomes.map((o) => ({ label: o, stroke: COLORS[o], width: 2 }))],
      }, data, box);
      new ResizeObserver(() => chart.setSize({ width: Math.max(240, box.clientWidth), height: 260 })).observe(box);
    } else if (chart) {
      chart.setData(data);
    }
    // The last complete second, in words, for screen readers and a glance.
    const last = history.length ? history[history.length - 1] : null;
    $("rate-now").replaceChildren(...outcomes.map((o) => {
      const span = el("span", {}, `${o}: ${last ? fmt(last[o]) : 0}/s`);
      span.style.color = COLORS[o];
      return span;
    }));
  }

  function render(snap) {
    $("served-by").textContent = snap.replica;
    if (snap.time) clockOffset = snap.time * 1000 - Date.now();
    renderProducts(snap.products || []);
    renderReplicas(snap.hits || {}, snap.replicas || {});
    renderLimits(snap);
    renderOrders(snap.recent_orders || []);
    renderHolds(snap.holds || []);
    renderHealth(snap);
    renderChart(snap);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/admin/live`);
    socket.onopen = () => { retryDelay = 500; setConnection("live", "live"); };
    socket.onmessage = (event) => {
      lastMessageAt = Date.now();
      setConnection("live", "live");
      render(JSON.parse(event.data));
    };
    socket.onclose = () => {
      setConnection("wait", "reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    };
  }

  setInterval(() => { for (const card of $("products").children) tick(card); }, 250);

  setInterval(() => {
    if (lastMessageAt && Date.now() - lastMessageAt > STALE_AFTER_MS) {
      setConnection("stale", `stale: no data for ${Math.round((Date.now() - lastMessageAt) / 1000)} s`);
    }
  }, 1000);

  $("clear-limits").addEventListener("click", async () => {
    if (!window.confirm("Clear every ban, strike and rate-limit bucket?")) return;
    try {
      const result = await post("/admin/clear-limits", {});
      say(`Cleared (${result.removed} keys).`);
    } catch (err) { say("Clear failed: " + err.message); }
  });

  render(JSON.parse(root.dataset.snapshot));
  connect();
})();
