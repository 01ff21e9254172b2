// The fewstep playground: streams /v1/chat/completions with `canvas: true` and draws each step's
// canvas. No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let catalog = null;

// Panels A and B from one template: each part gets the id PART-SIDE (strategy-a, canvas-b, ...).
for (const side of ["a", "b"]) {
  const panel = $("panel").content.firstElementChild.cloneNode(true);
  panel.id = "panel-" + side;
  panel.querySelector("h2").textContent = side.toUpperCase();
  for (const part of panel.querySelectorAll("[data-part]")) part.id = part.dataset.part + "-" + side;
  $("panels").appendChild(panel);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function loadCatalog() {
  const [models, strategies] = await Promise.all([
    fetch("/v1/models", { headers: headers() }).then((r) => r.json()),
    fetch("/v1/strategies", { headers: headers() }).then((r) => r.json()),
  ]);
  if (models.error || strategies.error) throw new Error((models.error || strategies.error).message);
  catalog = { model: models.data[0].id, ...strategies };
  $("model").textContent = "model: " + catalog.model;
  $("max-tokens").value = catalog.default.gen_length;
  for (const side of ["a", "b"]) {
    const select = $("strategy-" + side);
    select.innerHTML = "";
    for (const s of catalog.strategies) {
      const o = document.createElement("option");
      o.value = s.name;
      o.textContent = s.name;
      o.title = s.summary;
      select.appendChild(o);
    }
    // B compares another strategy where the model has one (a uniform-state model may have only its own)
    const other = catalog.default.strategy === "cad" ? "llada" : "cad";
    const served = catalog.strategies.some((s) => s.name === other);
    select.value = side === "a" || !served ? catalog.default.strategy : other;
    select.onchange = () => drawParams(side);
    drawParams(side);
  }
}

function drawParams(side) {
  const name = $("strategy-" + side).value;
  const box = $("params-" + side);
  box.innerHTML = "";
  const s = catalog.strategies.find((x) => x.name === name);
  for (const p of s.params) {
    const label = document.createElement("label");
    label.title = p.help + " " + p.range;
    label.textContent = p.name + " ";
    const input = document.createElement("input");
    input.dataset.param = p.name;
    input.dataset.type = p.type;
    const def = name === catalog.default.strategy && p.name in catalog.default ? catalog.default[p.name] : p.default;
    input.placeholder = String(def);
    label.appendChild(input);
    box.appendChild(label);
  }
}

function settingsOf(side) {
  const settings = {};
  for (const input of $("params-" + side).querySelectorAll("input")) {
    const v = input.value.trim();
    if (v === "") continue; // the default
    settings[input.dataset.param] = input.dataset.type === "str" ? v : (input.dataset.type === "bool" ? v === "true" : Number(v));
  }
  for (const part of $("extra-" + side).value.split(",")) {
    const [k, ...rest] = part.split("=");
    if (!k.trim() || !rest.length) continue;
    const v = rest.join("=").trim();
    settings[k.trim()] = v === "true" ? true : v === "false" ? false : (v !== "" && !isNaN(Number(v)) ? Number(v) : v);
  }
  return settings;
}

function hue(step, last) {
  return 220 - 210 * (last > 0 ? step / last : 0);
}

const history = { a: null, b: null }; // per panel: positions ever injected / ever revoked in this run

function drawCanvas(side, c) {
  const box = $("canvas-" + side);
  const last = Math.max(c.step, ...c.committed_at);
  const revoked = new Set(c.revoked || []);
  const h = history[side];
  for (const i of c.injected || []) h.injected.add(i);
  for (const i of revoked) h.revoked.add(i);
  box.innerHTML = "";
  c.tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = "tok";
    if (t === null) {
      span.classList.add("mask");
      span.innerHTML = "&nbsp;";
    } else {
      span.textContent = t;
      if (c.state[i] === 0) span.classList.add("noise"); // a uniform-state canvas: an undecided token
      else if (c.state[i] === 1) span.classList.add("prov");
      else if (h.injected.has(i) && !h.revoked.has(i)) span.classList.add("confirmed");
      else span.style.background = "hsl(" + hue(c.committed_at[i], last) + ",70%,80%)";
      span.title = c.state[i] === 0 ? "undecided" : "committed at step " + c.committed_at[i];
    }
    if (revoked.has(i)) span.classList.add("revoked");
    box.appendChild(span);
  });
}

function setStatus(side, text, error) {
  const el = $("status-" + side);
  el.textContent = text;
  el.classList.toggle("error", !!error);
}

async function run(side) {
  const t0 = performance.now();
  history[side] = { injected: new Set(), revoked: new Set() };
  $("final-" + side).textContent = "";
  $("stats-" + side).textContent = "";
  setStatus(side, "running", false);
  const body = {
    model: catalog.model,
    messages: [{ role: "user", content: $("prompt").value }],
    max_tokens: Number($("max-tokens").value),
    stream: true,
    canvas: true,
    strategy: $("strategy-" + side).value,
    settings: settingsOf(side),
  };
  const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!resp.ok) {
    const err = await resp.json().catch(() => ({ error: { message: resp.statusText } }));
    setStatus(side, "error: " + err.error.message, true);
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") {
        setStatus(side, "done", false);
        continue;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        setStatus(side, "error: " + chunk.error.message, true);
        continue;
      }
      const choice = chunk.choices[0];
      if (choice && choice.delta.content) text += choice.delta.content;
      $("final-" + side).textContent = text;
      const c = chunk.fewstep;
      if (c) {
        drawCanvas(side, c);
        const wall = ((performance.now() - t0) / 1000).toFixed(2);
        const u = c.usage;
        $("stats-" + side).textContent = u
          ? `NFE ${u.nfe} · tokens per forward ${u.tokens_per_forward.toFixed(2)} · wall ${wall} s · ${u.completion_tokens} tokens`
          : `step ${c.step + 1} · NFE ${c.nfe} · wall ${wall} s`;
      }
    }
  }
}

function guard(fn) {
  return () => fn().catch((e) => setStatus("a", "error: " + e.message, true));
}

$("run").onclick = guard(() => run("a"));
$("compare").onclick = guard(() => Promise.all([run("a"), run("b")]));
$("api-key").onchange = guard(loadCatalog);
guard(loadCatalog)();
