// A minimal OpenAPI 3.1 reference with "try it": operations, parameters, body fields, responses.
"use strict";

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

function resolve(spec, schema) {
  while (schema && schema.$ref) schema = schema.$ref.split("/").slice(1).reduce((o, k) => o[k], spec);
  return schema || {};
}

function typeOf(spec, schema) {
  schema = resolve(spec, schema);
  if (schema.oneOf || schema.anyOf) return (schema.oneOf || schema.anyOf).map((s) => typeOf(spec, s)).join(" | ");
  if (schema.type === "array") return `${typeOf(spec, schema.items)}[]`;
  return schema.type || schema.title || "object";
}

function example(spec, schema) {
  schema = resolve(spec, schema);
  const body = {};
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const p = resolve(spec, prop);
    if ((schema.required || []).includes(name)) body[name] = name === "symbol" ? "BTC/USDT" : name === "symbols" ? ["BTC/USDT"] : p.default ?? null;
  }
  return JSON.stringify(body);
}

function render(spec) {
  const out = [];
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const id = `${method}-${path}`.replace(/[^a-z0-9]/gi, "_");
      const params = (op.parameters || []).map((p) =>
        `<tr><td>${esc(p.name)}</td><td>${esc(p.in)}</td><td>${esc(typeOf(spec, p.schema))}</td><td>${p.required ? "required" : esc(JSON.stringify(resolve(spec, p.schema).default ?? ""))}</td>`
        + `<td><input data-param="${esc(p.name)}" data-in="${esc(p.in)}" size="12"></td></tr>`).join("");
      const bodySchema = op.requestBody && op.requestBody.content["application/json"].schema;
      const fields = bodySchema ? Object.entries(resolve(spec, bodySchema).properties || {}).map(([n, s]) =>
        `<tr><td>${esc(n)}</td><td>body</td><td>${esc(typeOf(spec, s))}</td><td>${esc(JSON.stringify(resolve(spec, s).default ?? "required"))}</td><td></td></tr>`).join("") : "";
      out.push(`<div class="card" id="${id}"><b>${method.toUpperCase()}</b> <code>${esc(path)}</code> — ${esc(op.summary || "")}
        <p class="note">${esc(op.description || "")}</p>
        <table><tr><th>name</th><th>in</th><th>type</th><th>default</th><th>value</th></tr>${params}${fields}</table>
        ${bodySchema ? `<textarea rows="3" cols="80">${esc(example(spec, bodySchema))}</textarea>` : ""}
        <p>responses: ${Object.keys(op.responses).map(esc).join(", ")} <button data-try="${id}" data-method="${method}" data-path="${esc(path)}">Try</button></p>
        <pre class="note"></pre></div>`);
    }
  }
  document.getElementById("ops").innerHTML = out.join("");
}

async function tryIt(button) {
  const card = document.getElementById(button.dataset.try);
  const query = new URLSearchParams();
  card.querySelectorAll("input[data-param]").forEach((i) => { if (i.value) query.set(i.dataset.param, i.value); });
  const headers = { "content-type": "application/json" };
  const key = document.getElementById("apikey").value;
  if (key) headers["X-API-Key"] = key;
  const area = card.querySelector("textarea");
  const response = await fetch(`${button.dataset.path}?${query}`, { method: button.dataset.method.toUpperCase(), headers,
    body: area ? area.value : undefined });
  card.querySelector("pre").textContent = `${response.status}\n${(await response.text()).slice(0, 4000)}`;
}

fetch("/schema/openapi.json").then((r) => r.json()).then(render);
document.addEventListener("click", (e) => { if (e.target.dataset.try) tryIt(e.target); });
