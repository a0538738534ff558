// The live dashboard: renders snapshots pushed over /admin/live, reconnects by itself, says when data is stale.
(function () {
  "use strict";

  const root = document.getElementById("dashboard");
  const xsrf = root.dataset.xsrf;
  const STALE_AFTER_MS = 2000;
  const COLORS = { "200": "#22c55e", "409": "#f59e0b", "429": "#a78bfa", "4xx": "#60a5fa", "5xx": "#ef4444" };
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

  function renderProducts(products) {
    const box = $("products");
    box.replaceChildren(...products.map((p) => {
      const pct = p.initial_stock ? Math.round((100 * p.sold) / p.initial_stock) : 0;
      const bar = el("div");
      bar.style.width = pct + "%";
      const input = el("input", { type: "number", min: "0", value: String(p.initial_stock),
                                  "aria-label": "New stock for " + p.name, id: "reset-stock-" + p.id });
      const reset = el("button", { type: "button", id: "reset-" + p.id, onclick: async () => {
        const stock = input.value;
        const question = `Reset "${p.name}" to ${fmt(stock)} units?\n` +
          `This deletes its ${fmt(p.orders)} orders (${fmt(p.sold)} units sold).`;
        if (!window.confirm(question)) return;
        try {
          await post("/admin/reset", { product_id: p.id, stock });
          say(`Product ${p.id} reset to ${fmt(stock)} units.`);
        } catch (err) { say("Reset failed: " + err.message); }
      } }, "Reset");
      return el("div", { class: "card", id: "product-" + p.id },
        el("div", { class: "row" },
          el("strong", {}, `#${p.id} ${p.name}`),
          el("span", { class: "badge " + (p.sold_out ? "badge-soldout" : "badge-selling") },
             p.sold_out ? "SOLD OUT" : "SELLING")),
        el("div", { class: "big", "data-field": "stock", "aria-label": "stock left" }, fmt(p.stock)),
        el("div", { class: "muted small" }, `left · ${fmt(p.sold)} sold of ${fmt(p.initial_stock)} (${pct}%) · ${fmt(p.orders)} orders` +
           (p.per_user_limit ? ` · at most ${fmt(p.per_user_limit)} per buyer` : "")),
        el("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
                    "aria-valuenow": String(pct), "aria-label": "share sold" }, bar),
        el("div", { class: "reset" }, input, reset));
    }));
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
        await post("/admin/unban", { kind, value });
        say(`Unbanned ${kind} ${value}.`);
      } catch (err) { say("Unban failed: " + err.message); }
    } }, "Unban");
  }

  function renderLimits(snap) {
    const s = snap.settings;
    $("limit-settings").textContent =
      `Per buyer ${s.rate_limit} (burst ${s.rate_burst}) · per address ${s.ip_rate_limit} · ` +
      `ban after ${s.ban_after} rejections for ${s.ban_seconds}s`;
    const bans = snap.bans || [];
    $("bans").replaceChildren(...(bans.length ? bans.map((b) => el("tr", { "data-ban": `${b.kind}:${b.value}` },
      el("td", {}, b.kind), el("td", {}, b.value), el("td", { class: "num" }, Math.ceil(b.seconds_left) + " s"),
      el("td", {}, unbanButton(b.kind, b.value)))) : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, "No active bans."))]));
    const limited = snap.top_limited || [];
    $("limited").replaceChildren(...(limited.length ? limited.map((t) => el("tr", {},
      el("td", {}, t.kind), el("td", {}, t.value), el("td", { class: "num" }, fmt(t.rejections)),
      el("td", {}, unbanButton(t.kind, t.value)))) : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, "Nobody is being limited."))]));
  }

  function renderOrders(orders) {
    $("orders").replaceChildren(...(orders.length ? orders.map((o) => el("tr", {},
      el("td", { class: "num" }, o.id), el("td", { class: "num" }, o.user_id), el("td", { class: "num" }, o.product_id),
      el("td", { class: "num" }, o.quantity), el("td", {}, new Date(o.created_at).toLocaleTimeString()),
      el("td", {}, o.replica))) : [el("tr", {}, el("td", { colspan: "6", class: "muted" }, "No orders yet."))]));
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
    renderProducts(snap.products || []);
    renderReplicas(snap.hits || {}, snap.replicas || {});
    renderLimits(snap);
    renderOrders(snap.recent_orders || []);
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
