// The mcp-hub web console: a static page over the hub's JSON API.
// The operator's API key lives in sessionStorage (this tab only) and goes out as a Bearer header.
// Every value from the API is written with textContent, never parsed as HTML.
"use strict";

const KEY = "mcp-hub-api-key";
const state = { executionsCursor: null, filters: {} };

const $ = (selector) => document.querySelector(selector);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function status(message, isError) {
  const node = $("#status");
  node.textContent = message || "";
  node.className = isError ? "error" : "muted";
}

async function api(path) {
  const headers = { accept: "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.authorization = "Bearer " + key;
  const response = await fetch(path, { headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : "HTTP " + response.status;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function fail(error) {
  status(error.status === 401 ? "This page needs a hub API key: paste one above." : "Error: " + error.message, true);
}

// -- marketplace ------------------------------------------------------------------------------

async function showServers() {
  const query = $("#search").value.trim();
  const params = new URLSearchParams();
  if (query) params.set("q", query.toLowerCase());
  if ($("#show-unlisted").checked) params.set("include_unlisted", "true");
  const body = await api("/v1/servers?" + params.toString());
  const tbody = $("#servers-table tbody");
  tbody.replaceChildren();
  for (const server of body.data) {
    const tags = el("span");
    for (const tag of server.tags) tags.appendChild(el("span", tag, "tag"));
    const link = el("a", server.slug);
    link.href = "#/servers/" + server.slug;
    const tr = row([link, server.description, tags, server.latest, server.kind,
                    server.source === "registered" ? "published" : "registry file",
                    server.connections.length ? server.connections.join(", ") : "none"]);
    tr.className = "clickable server-row";
    tr.dataset.slug = server.slug;
    if (server.unlisted) tr.classList.add("muted");
    tr.addEventListener("click", () => { location.hash = "#/servers/" + server.slug; });
    tbody.appendChild(tr);
  }
  status(body.data.length + " server(s)");
}

async function showServer(slug) {
  status("Loading " + slug + " …");
  const server = await api("/v1/servers/" + slug);
  $("#server-title").textContent = server.slug + "  (latest " + server.latest + ")";
  $("#server-description").textContent = server.description;
  const versions = $("#versions-table tbody");
  versions.replaceChildren();
  for (const version of server.versions) {
    versions.appendChild(row([version.version, version.kind, version.transport, version.url || "hosted by the hub",
                              version.deprecated ? "deprecated" : ""]));
  }
  const connections = $("#connections-table tbody");
  connections.replaceChildren();
  for (const connection of server.connections) {
    connections.appendChild(row([connection.name, connection.fields.join(", "), connection.required ? "yes" : "no",
                                 connection.description]));
  }
  if (!server.connections.length) connections.appendChild(row(["none", "", "", ""]));
  const live = server.live || {};
  $("#tools-version").textContent = live.version ? "(version " + live.version + ", listed live)" : "";
  const error = $("#tools-error");
  error.hidden = !live.error;
  error.textContent = live.error ? live.error.code + ": " + live.error.message : "";
  const tools = $("#tools");
  tools.replaceChildren();
  for (const tool of live.tools || []) {
    const box = el("div", null, "tool");
    box.dataset.tool = tool.name;
    box.appendChild(el("h4", tool.name));
    box.appendChild(el("p", tool.description || ""));
    box.appendChild(el("pre", JSON.stringify(tool.inputSchema || {}, null, 2)));
    tools.appendChild(box);
  }
  status((live.tools || []).length + " tool(s)");
}

// -- audit --------------------------------------------------------------------------------------

async function showExecutions(append) {
  const params = new URLSearchParams({ limit: "50" });
  for (const [name, value] of Object.entries(state.filters)) if (value) params.set(name, value);
  if (append && state.executionsCursor) params.set("cursor", state.executionsCursor);
  const body = await api("/v1/audit/tool-calls?" + params.toString());
  const tbody = $("#executions-table tbody");
  if (!append) tbody.replaceChildren();
  for (const record of body.data) {
    // completed | failed (with its code) | interrupted (the hub stopped mid-call) | pruned (a retention record)
    const label = record.status === "failed" ? "failed: " + (record.error_code || "error") : record.status;
    const result = el("span", label, record.status === "completed" || record.status === "pruned" ? "good" : "bad");
    const tr = row([record.seq, record.ended_at.replace("T", " ").replace(/\.\d+Z$/, "Z"), record.source,
                    record.server_name, record.tool_name || "(" + record.kind + ")", result, record.duration_ms,
                    record.completion_id || ""]);
    tr.className = "clickable execution-row";
    tr.addEventListener("click", () => {
      const detail = $("#execution-detail");
      detail.hidden = false;
      detail.textContent = JSON.stringify(record, null, 2);
    });
    tbody.appendChild(tr);
  }
  state.executionsCursor = body.next_cursor;
  $("#more").hidden = !body.has_more;
  status(tbody.children.length + " execution(s)" + (body.has_more ? ", more available" : ""));
}

async function showChain() {
  const report = await api("/v1/audit/verify");
  const box = $("#chain-result");
  box.replaceChildren();
  const verdict = el("p", report.ok ? "Verified: the chain is intact" : "BROKEN: the chain does not verify",
                     report.ok ? "good" : "bad");
  verdict.id = "chain-verdict";
  box.appendChild(verdict);
  box.appendChild(el("p", "tenant " + report.tenant + ", " + report.records_checked + " record(s) checked"));
  if (report.unfinished) box.appendChild(el("p", report.unfinished + " call(s) running (or cut short, not yet recorded as interrupted)", "muted"));
  if (report.head && report.head.hash) box.appendChild(el("p", "head #" + report.head.seq + "  " + report.head.hash, "muted"));
  if (report.first_broken_link) box.appendChild(el("pre", JSON.stringify(report.first_broken_link, null, 2)));
  status("");
}

// -- routing ------------------------------------------------------------------------------------

function page(name) {
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== "page-" + name;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === name || (name === "server" && link.dataset.page === "servers"));
  }
}

async function route() {
  const hash = location.hash || "#/servers";
  try {
    if (hash.startsWith("#/servers/")) {
      page("server");
      await showServer(decodeURIComponent(hash.slice("#/servers/".length)));
    } else if (hash === "#/executions") {
      page("executions");
      await showExecutions(false);
    } else if (hash === "#/chain") {
      page("chain");
      await showChain();
    } else {
      page("servers");
      await showServers();
    }
  } catch (error) {
    fail(error);
  }
}

function init() {
  $("#api-key").value = sessionStorage.getItem(KEY) || "";
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    route();
  });
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("#api-key").value = "";
    route();
  });
  let pending = null;
  $("#search").addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(() => showServers().catch(fail), 200);
  });
  $("#show-unlisted").addEventListener("change", () => showServers().catch(fail));
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.filters = Object.fromEntries(new FormData(event.target).entries());
    showExecutions(false).catch(fail);
  });
  $("#more").addEventListener("click", () => showExecutions(true).catch(fail));
  $("#verify").addEventListener("click", () => showChain().catch(fail));
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", init);
