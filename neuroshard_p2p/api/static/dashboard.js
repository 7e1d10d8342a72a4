// NeuroShard dashboard: polls the node's read-only API every 3 s and updates the page in place.
// No libraries: the chart is drawn by hand on a <canvas>. Everything is read from the API; the
// colour level of the price ("low" / "medium" / "high") is decided by the server (one place for
// the thresholds) and only rendered here.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const NANO = 1e9;
  const LEVELS = ["low", "medium", "high"];

  const state = {
    window: "1h",
    refreshes: 0,
    market: null,
    history: null,
    timer: null,
  };

  const $ = (id) => document.getElementById(id);

  function setText(id, text) {
    const el = $(id);
    if (el && el.textContent !== text) el.textContent = text;
  }

  // Prices are shown in NEURO per 1M tokens with enough digits to see a tick's change.
  function formatPrice(neuro) {
    if (neuro === null || neuro === undefined || !isFinite(neuro)) return "—";
    if (neuro === 0) return "0";
    if (neuro >= 100) return neuro.toFixed(2);
    if (neuro >= 0.01) return neuro.toFixed(4);
    return neuro.toFixed(6);
  }

  function formatNano(nano) {
    if (nano === null || nano === undefined) return "—";
    return formatPrice(nano / NANO) + " NEURO";
  }

  function formatCount(n) {
    if (n === null || n === undefined) return "—";
    return Number(n).toLocaleString("en-US");
  }

  function formatUtilization(u) {
    // null means infinite: demand waiting and no supply at all.
    if (u === null || u === undefined) return "∞";
    return (u * 100).toFixed(1) + " %";
  }

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok) {
      const error = new Error(path + " → HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function renderMarket(m) {
    const price = $("current-price");
    const level = LEVELS.includes(m.price_level) ? m.price_level : "unknown";
    price.textContent = formatPrice(m.current_price);
    price.dataset.priceNano = String(m.current_price_nano);
    price.dataset.level = level;
    for (const name of [...LEVELS, "unknown"]) {
      price.classList.toggle("price-" + name, name === level);
    }
    const target = $("target-price");
    target.textContent = formatPrice(m.target_price);
    target.dataset.priceNano = String(m.target_price_nano);
    setText("avg-price-24h", formatPrice(m.avg_price_24h));
    setText("price-range", formatPrice(m.min_price) + " – " + formatPrice(m.max_price));
    setText("tick", String(m.tick));
    setText("utilization", formatUtilization(m.utilization));
    const u = m.utilization === null ? 1 : Math.min(1, Math.max(0, m.utilization));
    $("utilization-bar").style.width = (u * 100).toFixed(1) + "%";
    setText("supply", formatCount(m.supply_tokens_per_sec));
    setText("demand", formatCount(m.demand_tokens_waiting));
    setText("pending-requests", formatCount(m.pending_requests));
    setText("available-nodes", formatCount(m.available_nodes));
    setText("network", m.network || "—");
    setText("mode", m.enabled ? m.mode : "disabled");
  }

  function renderNode(node) {
    const id = node.peer_id || "";
    const short = id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id;
    const el = $("node-id");
    el.textContent = short || "—";
    el.title = id;
    const offer = node.offer;
    const own = $("own-offer");
    if (offer && offer.tokens_per_second > 0) {
      own.textContent = formatCount(offer.tokens_per_second) + " tokens/s";
      own.className = "own-offer-active";
      setText("own-min-price", formatPrice(offer.min_price) + " NEURO");
    } else {
      own.textContent = "not offering capacity";
      own.className = "own-offer-none";
      setText("own-min-price", "—");
    }
    if (typeof node.peers === "number") setText("peers", formatCount(node.peers));
    const reach = node.reach;
    if (reach) {
      setText("reachability", reach.reachability);
      $("reachability").title = reach.advice;
      const conns = reach.connections || {};
      const relays = Object.keys(reach.relays || {}).length;
      setText("reachability-hint", (conns.direct || 0) + " direct, " + (conns.relayed || 0) +
        " relayed" + (relays ? "; " + relays + " relay reservation" + (relays > 1 ? "s" : "") : ""));
    }
    const clock = node.clock;
    if (clock) {
      // The clock watch's verdict (node/clockwatch.py): a wrong clock silently stops peers
      // counting this node's capacity, so it is shown where the operator looks.
      const off = clock.offset_s === null ? "" : Math.round(Math.abs(clock.offset_s)) + " s ";
      const words = { agrees: "in step", unknown: "not measured yet",
                      ahead: off + "ahead", behind: off + "behind",
                      differs: off + "off its only peer's" };
      setText("clock", words[clock.state] || clock.state);
      $("clock").className = "value" + (["ahead", "behind", "differs"].includes(clock.state)
        ? " clock-wrong" : "");
      $("clock").title = clock.text;
      setText("clock-hint", clock.signers ? "against " + formatCount(clock.signers) + " signer" +
        (clock.signers > 1 ? "s" : "") : "against peers' signed time");
    }
    const charter = node.charter;
    if (charter) {
      setText("network", charter.network_id);
      $("network").title = "network id (charter " + charter.name + ", hash " + charter.hash + ")";
      setText("policy", charter.policy === "members" ? "members only" : "open");
      setText("model", charter.model);
    }
    const work = node.work;
    if (work) {
      const weight = work.weight >= 1 ? "full weight" : "weight 1/" + formatCount(Math.round(1 / work.weight));
      setText("work", work.required_bits === 0 ? "none needed"
        : work.bits + " / " + work.required_bits + " bits (" + weight + ")");
    }
    const outcomes = { accepted: 0, rejected: 0, ignored: 0 };
    for (const m of node.messages || []) {
      if (m.outcome in outcomes) outcomes[m.outcome] += m.count;
    }
    setText("messages-accepted", formatCount(outcomes.accepted));
    setText("messages-rejected", formatCount(outcomes.rejected));
    setText("messages-ignored", formatCount(outcomes.ignored));
  }

  function renderLedger(ledger) {
    // `ledger.node` is this node's share of the ledger: earned as a provider, spent as a user.
    const earnings = $("earnings");
    const mine = ledger && ledger.node;
    if (!mine) {
      earnings.textContent = "no ledger";
      earnings.dataset.earnedNano = "";
      setText("served", "—");
      setText("spent", "—");
      setText("burned", "—");
      return;
    }
    earnings.textContent = formatNano(mine.earned_nano);
    earnings.dataset.earnedNano = String(mine.earned_nano);
    setText("served", formatCount(mine.tokens_served) + " tokens");
    setText("spent", formatNano(mine.spent_nano));
    setText("burned", formatNano(mine.burned_nano));
  }

  function renderProviders(offers) {
    // One row per offer in view: how this gateway routes to it, and why a skipped one is skipped.
    const body = $("providers-body");
    const rows = (offers.offers || []).map((o) => {
      const r = o.routing || { state: "—", why: "" };
      const id = o.peer_id || "";
      const short = id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id;
      const tr = document.createElement("tr");
      tr.className = "routing-" + r.state + (r.skipped ? " skipped" : "");
      tr.dataset.peerId = id;
      for (const text of [short, formatCount(o.tokens_per_second), formatPrice(o.min_price),
                          r.state.replace("_", " "), r.why || ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.firstChild.title = id;
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 5;
      td.textContent = "no offers in view";
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  // ---- chart ------------------------------------------------------------------------------

  function drawChart(history, market) {
    const canvas = $("price-chart");
    let points = (history && history.points) || [];
    canvas.dataset.points = String(points.length);
    canvas.dataset.window = history ? history.window : "";
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 900;
    const height = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const css = getComputedStyle(document.documentElement);
    const gridColour = css.getPropertyValue("--grid").trim() || "#2a3545";
    const textColour = css.getPropertyValue("--subtle").trim() || "#8b98a8";
    const lineColour = css.getPropertyValue("--medium").trim() || "#3b82f6";
    const left = 64, right = 16, top = 12, bottom = 28;
    const plotW = width - left - right, plotH = height - top - bottom;
    ctx.font = "12px system-ui, sans-serif";

    const now = history ? history.now : Date.now() / 1000;
    const windowS = history ? history.seconds : 3600;
    // A node up for less than the window shows what it has across the whole width, not a
    // sliver at the right edge; the axis labels say the real span.
    const first = points.length ? points[0][0] : now - windowS;
    const seconds = Math.max(Math.min(windowS, now - first), 10);
    const t0 = now - seconds;
    if (points.length === 0) {
      ctx.fillStyle = textColour;
      ctx.fillText("no price history yet", left + 8, top + plotH / 2);
      setText("chart-note", "Waiting for the first ticks.");
      return;
    }

    // The last recorded price holds until now (a 24 h point is the mean of a minute that may
    // still be running), so the line reaches the right edge.
    const lastPoint = points[points.length - 1];
    if (lastPoint[0] < now) points = [...points, [now, lastPoint[1]]];

    // y range: the prices seen, padded, never narrower than 1% of the market's range so a flat
    // line sits in the middle instead of filling the chart with noise.
    let lo = Infinity, hi = -Infinity;
    for (const [, p] of points) { lo = Math.min(lo, p); hi = Math.max(hi, p); }
    const span = market ? (market.max_price - market.min_price) * NANO : hi - lo;
    const minSpan = Math.max(span * 0.01, 1);
    if (hi - lo < minSpan) { const mid = (hi + lo) / 2; lo = mid - minSpan / 2; hi = mid + minSpan / 2; }
    // Pad a little, but never past the curve's own bounds when the data stays inside them.
    const pad = (hi - lo) * 0.1;
    const floor = market ? Math.min(lo, market.min_price_nano) : 0;
    const ceiling = market ? Math.max(hi, market.max_price_nano) : Infinity;
    lo = Math.max(floor, lo - pad); hi = Math.min(ceiling, hi + pad);

    const x = (t) => left + ((t - t0) / seconds) * plotW;
    const y = (p) => top + (1 - (p - lo) / (hi - lo)) * plotH;

    // grid and y labels
    ctx.strokeStyle = gridColour; ctx.lineWidth = 1; ctx.fillStyle = textColour;
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const p = lo + ((hi - lo) * i) / 4;
      const yy = Math.round(y(p)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(left + plotW, yy); ctx.stroke();
      ctx.fillText(formatPrice(p / NANO), left - 8, yy);
    }
    // x labels: seconds, minutes or hours ago, whichever suits the span
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    const [unit, unitS] = seconds > 3 * 3600 ? [" h", 3600] : seconds > 180 ? [" min", 60] : [" s", 1];
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (seconds * i) / 4;
      const ago = (now - t) / unitS;
      const label = i === 4 ? "now" : "−" + (ago < 10 ? ago.toFixed(1).replace(/\.0$/, "") : Math.round(ago)) + unit;
      ctx.textAlign = i === 0 ? "left" : i === 4 ? "right" : "center";
      ctx.fillText(label, x(t), top + plotH + 8);
    }

    // area + line
    ctx.beginPath();
    points.forEach(([t, p], i) => { if (i === 0) ctx.moveTo(x(t), y(p)); else ctx.lineTo(x(t), y(p)); });
    const last = points[points.length - 1];
    ctx.save();
    ctx.lineTo(x(last[0]), top + plotH); ctx.lineTo(x(points[0][0]), top + plotH); ctx.closePath();
    const fill = ctx.createLinearGradient(0, top, 0, top + plotH);
    fill.addColorStop(0, "rgba(59, 130, 246, 0.35)"); fill.addColorStop(1, "rgba(59, 130, 246, 0.02)");
    ctx.fillStyle = fill; ctx.fill();
    ctx.restore();
    ctx.beginPath();
    points.forEach(([t, p], i) => { if (i === 0) ctx.moveTo(x(t), y(p)); else ctx.lineTo(x(t), y(p)); });
    ctx.strokeStyle = lineColour; ctx.lineWidth = 2; ctx.stroke();

    // the latest point, in the colour of the current level
    const level = market && LEVELS.includes(market.price_level) ? market.price_level : "medium";
    ctx.fillStyle = css.getPropertyValue("--" + level).trim() || lineColour;
    ctx.beginPath(); ctx.arc(x(last[0]), y(last[1]), 4, 0, Math.PI * 2); ctx.fill();

    const recorded = Number(canvas.dataset.points);
    setText("chart-note", recorded + (recorded === 1 ? " point, " : " points, ") + formatPrice(lo / NANO) + " – " +
      formatPrice(hi / NANO) + " NEURO per 1M tokens");
  }

  // ---- refresh loop -----------------------------------------------------------------------

  async function refresh() {
    const errors = [];
    const [market, node, peers, history, ledger, offers] = await Promise.allSettled([
      getJSON("/api/market"),
      getJSON("/api/node"),
      getJSON("/api/peers"),
      getJSON("/api/market/history?window=" + encodeURIComponent(state.window)),
      getJSON("/api/ledger"),
      getJSON("/api/market/offers"),
    ]);
    if (market.status === "fulfilled") { state.market = market.value; renderMarket(market.value); }
    else errors.push(market.reason.message);
    if (node.status === "fulfilled") renderNode(node.value); else errors.push(node.reason.message);
    if (peers.status === "fulfilled") setText("peers", formatCount(peers.value.count));
    else errors.push(peers.reason.message);
    if (offers.status === "fulfilled") renderProviders(offers.value);
    else errors.push(offers.reason.message);
    if (history.status === "fulfilled") state.history = history.value;
    else errors.push(history.reason.message);
    drawChart(state.history, state.market);
    // A node without a ledger answers 404: show that, it is not an error.
    if (ledger.status === "fulfilled") renderLedger(ledger.value);
    else if (ledger.reason.status === 404) renderLedger(null);
    else errors.push(ledger.reason.message);

    const status = $("status");
    const errorBox = $("error");
    if (market.status === "fulfilled") {
      status.textContent = "live";
      status.className = "status status-live";
      setText("last-update", new Date().toLocaleTimeString());
    } else {
      status.textContent = "node not answering";
      status.className = "status status-stale";
    }
    errorBox.hidden = errors.length === 0;
    errorBox.textContent = errors.join("; ");
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
  }

  function schedule() {
    // A chained timeout, not setInterval: a slow answer never stacks requests up.
    state.timer = setTimeout(async () => {
      try { await refresh(); } finally { schedule(); }
    }, REFRESH_MS);
  }

  function chooseWindow(name) {
    state.window = name;
    for (const button of document.querySelectorAll(".window-button")) {
      button.classList.toggle("active", button.dataset.window === name);
    }
    getJSON("/api/market/history?window=" + encodeURIComponent(name))
      .then((h) => { state.history = h; drawChart(h, state.market); })
      .catch(() => {});
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const button of document.querySelectorAll(".window-button")) {
      button.addEventListener("click", () => chooseWindow(button.dataset.window));
    }
    window.addEventListener("resize", () => drawChart(state.history, state.market));
    refresh().finally(schedule);
  });

  // For people poking at the page from the console.
  window.neuroshardDashboard = { refresh, state };
})();
